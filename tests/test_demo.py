"""The demo end to end, in its quick form: train four optimizers, analyse, plot, table."""

from __future__ import annotations

import json

from landscape.cli import main


def test_demo_quick(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for run in ("sgd", "sam", "sam-on", "msam"):
        assert f"\n{run} " in out
        assert (tmp_path / "checkpoints" / run / "epoch_0002.pt").exists()
    assert "lambda_max" in out and "sharp@" in out and "curv(mom)" in out
    figures = {p.name for p in (tmp_path / "figures").iterdir()}
    assert {"hessian_density.png", "sharpness_rho.png", "norm_params_hist.png", "training_curves.png"} <= figures
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert summary["failed"] == [] and len(summary["done"]) == 4 * 4
    # a second run resumes everything: nothing retrained, every result skipped
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
