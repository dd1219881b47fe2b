"""Your own model, data, loss and checkpoints through `landscape analyze` (issue 9, "Done means").

The user module, the training loop and the Python analysis are the README's "Your own model"
code blocks, run as written: a plain PyTorch loop saves ``{"model_state_dict",
"optimizer_state_dict", "epoch"}`` each epoch; then ``landscape analyze`` (CLI, two spawned
workers) and ``landscape.analyze`` run with ``--model mynets:make_cnn --data mynets:make_data
--loss mynets:smooth_ce`` on those files plus a Lightning-layout ``.ckpt`` and a
``.safetensors`` file. Every file is analysed, results are bitwise equal between the two
runs and to direct calls, momentum is read from the foreign optimizer state, epochs are steps.
"""

from __future__ import annotations

import json
import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import landscape
from landscape import results
from landscape.analyses.hessian import hessian_spectrum
from landscape.analyses.momentum import momentum_curvature
from landscape.analyses.sharpness import sharpness
from landscape.cli_analyze import main

README = Path(__file__).parent.parent / "README.md"


def readme_blocks() -> dict[str, str]:
    """The ``python`` blocks of the README's "Your own model" section, by their first-line file name."""
    text = README.read_text()
    section = text[text.index("## Your own model"):]
    section = section[: section.index("\n## ", 5)]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    out = {}
    for b in blocks:
        first = b.splitlines()[0]
        m = re.match(r"# (\w+\.py)", first)
        assert m, f"README block without a '# file.py' first line: {first!r}"
        out[m.group(1)] = b
    assert set(out) == {"mynets.py", "train.py", "analyze.py"}, sorted(out)
    return out


@pytest.fixture
def project(tmp_path, monkeypatch):
    """tmp_path as the user's project folder: mynets.py, train.py, analyze.py from the README."""
    for name, code in readme_blocks().items():
        (tmp_path / name).write_text(code)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("mynets", None)
    yield tmp_path
    sys.modules.pop("mynets", None)


def _momentum_of(ck: dict, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # A plain optimizer's state is indexed by position in model.parameters().
    state = ck["optimizer_state_dict"]["state"]
    return {name: state[i]["momentum_buffer"] for i, (name, _) in enumerate(model.named_parameters())}


def _bits(ds, name):
    return np.ascontiguousarray(ds[name].values).tobytes()


def test_own_model_data_loss_and_checkpoints_end_to_end(project, capsys):
    runpy.run_path("train.py", run_name="__main__")
    ckpts = sorted((project / "ckpts").glob("*.pt"))
    assert [c.name for c in ckpts] == ["epoch_1.pt", "epoch_2.pt", "epoch_3.pt"]
    import mynets

    # The same weights in the two other layouts people have, in folders of their own (runs).
    last = torch.load(ckpts[-1], weights_only=True)
    (project / "other" / "lightning").mkdir(parents=True)
    torch.save({"state_dict": {f"model.{k}": v for k, v in last["model_state_dict"].items()},
                "optimizer_states": [last["optimizer_state_dict"]], "epoch": 3, "global_step": 12},
               project / "other" / "lightning" / "epoch=3-step=12.ckpt")
    from safetensors.torch import save_file

    (project / "other" / "st").mkdir()
    save_file({k: v.contiguous() for k, v in last["model_state_dict"].items()}, project / "other" / "st" / "model.safetensors")

    # Python, serially: the README's analyze.py as written.
    runpy.run_path("analyze.py", run_name="__main__")
    printed = capsys.readouterr().out
    assert printed.startswith("9 done, 0 skipped, 0 failed"), printed

    # CLI, two spawned workers, the same options from a TOML file: a plain checkpoint named as a
    # file and the folder of the other layouts.
    (project / "analyze.toml").write_text(
        '[hessian]\ntop_k = 2\ntrace = false\ndensity = false\n'
        '[sharpness]\nrho = [0.05]\nn = 256\nm = 64\nsteps = 5\n'
        '[momentum]\nrandom_directions = 2\n'
    )
    code = main(["analyze", "ckpts/epoch_2.pt", "other", "-a", "hessian,sharpness,momentum", "--out", "cli",
                 "--model", "mynets:make_cnn", "--data", "mynets:make_data", "--loss", "mynets:smooth_ce",
                 "--config", "analyze.toml", "--workers", "2", "--threads", "1"])
    cli_out, cli_err = capsys.readouterr()
    # Everything but momentum of the weights-only .safetensors file, which has no optimizer state.
    assert code == 1 and "8 done, 0 skipped, 1 failed" in cli_out, (cli_out, cli_err)
    failed = json.loads((project / "cli" / "summary.json").read_text())["failed"]
    assert [(Path(r["checkpoint"]).name, r["analysis"]) for r in failed] == [("model.safetensors", "momentum")]
    assert "no optimizer state" in failed[0]["error"] or "momentum" in failed[0]["error"]

    # Bitwise: CLI (workers) == Python (serial) for every analysis.
    for analysis in ("hessian", "sharpness", "momentum"):
        py = landscape.open_results("results", analysis)
        assert py["step"].values.tolist() == [1, 2, 3]  # the epochs
        assert py["epoch"].values.tolist() == [[1, 2, 3]]
        py = py.sel(run=["ckpts"], step=[2])
        cli = landscape.open_results(project / "cli", analysis).sel(run=["ckpts"], step=[2])
        for var in py.data_vars:
            # (the CLI folder also holds step 12: its outer join made bool/int variables float)
            assert _bits(py, var) == np.ascontiguousarray(cli[var].values.astype(py[var].dtype)).tobytes(), (analysis, var)

    # Bitwise equal to direct calls on the loaded weights (one plain checkpoint, all analyses).
    opts = {"hessian": dict(top_k=2, trace=False, density=False),
            "sharpness": dict(rho=[0.05], n=256, m=64, steps=5),
            "momentum": dict(random_directions=2)}
    ck = torch.load(ckpts[1], weights_only=True)
    model = mynets.make_cnn()
    model.load_state_dict(ck["model_state_dict"])
    model.eval()
    data = mynets.make_data("train")
    direct = {
        "hessian": hessian_spectrum(model, data, loss=mynets.smooth_ce, progress=False, **opts["hessian"]),
        "sharpness": sharpness(model, data, loss=mynets.smooth_ce, progress=False, **opts["sharpness"]),
        "momentum": momentum_curvature(model, data, momentum=_momentum_of(ck, model), loss=mynets.smooth_ce,
                                       **opts["momentum"]),
    }
    for analysis, want in direct.items():
        got = landscape.open_results("results", analysis).sel(run="ckpts", step=2)
        for var in want.data_vars:
            assert _bits(got, var) == np.ascontiguousarray(want[var].values).astype(got[var].dtype).tobytes(), (analysis, var)

    # The Lightning and safetensors files hold the last epoch's weights: the same results.
    for analysis, var in (("hessian", "eigenvalues"), ("sharpness", "sharpness"), ("momentum", "curvature")):
        py = landscape.open_results("results", analysis).sel(run="ckpts", step=3)[var].values.tolist()
        cli = results.open_results(project / "cli", analysis)
        assert cli.sel(run="lightning", step=12)[var].values.tolist() == py, analysis
        if analysis != "momentum":
            assert cli.sel(run="st").dropna("step", how="all")[var].values.tolist() == [py], analysis
