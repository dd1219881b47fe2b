"""The public API: every declared name resolves; the README example runs."""

from __future__ import annotations

import landscape as ls


def test_every_public_name_resolves():
    for name in ls.__all__:
        assert getattr(ls, name) is not None, name


def test_readme_example_small(tmp_path):
    run = ls.train(ls.TrainConfig(dataset="synthetic", model="mlp", model_kwargs={"norm": "batch"},
                                  epochs=1, out=str(tmp_path / "ckpt" / "sam-on"),
                                  sam=ls.SAMConfig(rho=0.5, mask="norm")), progress=False)
    ckpt = ls.load_checkpoint(run / "last.pt")
    data = ls.get_dataset("synthetic", "train")
    spec = ls.hessian_spectrum(ckpt.model, data, top_k=3, max_samples=128, trace_samples=12,
                               slq_runs=2, slq_steps=10)
    sharp = ls.sharpness(ckpt.model, data, kind="worst", norm="linf", rho=[0.001, 0.002], n=128, m=64, steps=3)
    assert spec.eigenvalues.shape == (3,) and sharp.sharpness_mean.sel(rho=0.002) >= 0
    summary = ls.analyze(tmp_path / "ckpt", ["hessian"], out=tmp_path / "results", progress=False,
                         options={"hessian": {"top_k": 2, "density": False, "trace": False}, "data": {"n": 64}})
    assert not summary.failed
    assert ls.open_results(tmp_path / "results", "hessian").eigenvalues.dims == ("run", "step", "k")
