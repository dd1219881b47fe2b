"""The demo end to end, in its quick form: train four optimizers, analyse, plot, table, reuse."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from landscape.cli import main
from landscape.demo import GALLERY, DemoBudget, DemoLayout, format_table, pixel_range_reason

RUNS = ("sgd", "sam", "sam-on", "msam")
ANALYSES = ("hessian", "sharpness", "momentum", "norm_params", "feature_rank")


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """Two quick demo runs on one folder: (folder, first output, second output)."""
    out = tmp_path_factory.mktemp("demo")
    outputs = []
    for _ in range(2):
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert main(["demo", "--quick", "--out", str(out)]) == 0
        outputs.append(buf.getvalue())
    return out, outputs[0], outputs[1]


def test_demo_trains_every_optimizer_with_a_checkpoint_every_epoch(quick_demo):
    out, first, _ = quick_demo
    for run in RUNS:
        assert {p.name for p in (out / "checkpoints" / run).glob("epoch_*.pt")} == {"epoch_0001.pt", "epoch_0002.pt"}
    assert "reused 0 of 4 trained runs" in first


def test_demo_runs_every_analysis_on_every_epoch_and_the_slice_on_the_last(quick_demo):
    out, _, _ = quick_demo
    summary = json.loads((out / "results" / "summary.json").read_text())
    assert summary["failed"] == []
    results = {(r["run"], Path(r["checkpoint"]).stem, r["analysis"]) for r in summary["done"]}
    for run in RUNS:
        for epoch in ("epoch_0001", "epoch_0002"):
            for analysis in ANALYSES:
                assert (run, epoch, analysis) in results
        assert (run, "epoch_0002", "slice") in results
        assert (run, "epoch_0001", "slice") not in results  # the 2-D slice: last checkpoint only
    assert not any(a == "robustness" for _, _, a in results)  # MNIST-1D has no pixel range


def test_demo_table_has_every_column_for_every_run(quick_demo):
    out, first, _ = quick_demo
    header = next(line for line in first.splitlines() if line.startswith("run "))
    assert header.split() == ["run", "test", "acc", "sharpness", "lambda_max", "trace", "feat", "rank",
                              "mean", "gamma", "mom", "cos"]
    report = json.loads((out / "results" / "demo_table.json").read_text())
    for run in RUNS:
        row = report["table"][run]
        assert set(row) >= {"test_acc", "sharpness", "lambda_max", "trace", "feature_rank", "mean_gamma",
                            "momentum_cosine"}
        line = next(line for line in first.splitlines() if line.startswith(f"{run} "))
        assert len(line.split()) == 8 and "-" not in line.split()[1:]  # every value printed
        assert 0.0 <= row["test_acc"] <= 1.0 and -1.0 <= row["momentum_cosine"] <= 1.0
        assert row["lambda_max"] > 0 and row["feature_rank"] >= 1
    assert "robustness: not run: MNIST-1D" in first


def test_demo_figures_listed_exist_including_the_curves_over_training(quick_demo):
    out, first, _ = quick_demo
    listed = [Path(m) for m in re.findall(r"^  (\S+\.png)$", first, flags=re.M)]
    assert listed and all(p.exists() for p in listed)
    stems = {p.stem for p in listed}
    assert {"training_curves", "hessian_eigenvalues", "hessian_trace", "hessian_density", "sharpness_step",
            "sharpness_rho", "feature_rank_step", "norm_params_hist", "slice_contour"} <= stems
    assert all(p.parent == out / "figures" for p in listed)


def test_demo_second_run_reuses_everything_and_says_so(quick_demo):
    out, first, second = quick_demo
    n = 4 * 2 * len(ANALYSES) + 4
    assert f"reused 4 of 4 trained runs and {n} of {n} results; computed 0" in second
    # the same numbers: nothing was recomputed
    table = lambda text: [line for line in text.splitlines() if line.split()[:1] and line.split()[0] in RUNS]  # noqa: E731
    assert table(first) == table(second)


def test_demo_gallery_copies_pngs_under_the_size_limit(quick_demo, tmp_path):
    out, _, _ = quick_demo
    assert main(["demo", "--quick", "--out", str(out), "--gallery", str(tmp_path / "gallery")]) == 0
    pngs = sorted((tmp_path / "gallery").glob("*.png"))
    assert pngs and {p.stem for p in pngs} <= set(GALLERY)
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size < 300_000 for p in pngs)


def test_demo_redraw_draws_the_figures_again_without_computing(quick_demo, capsys):
    out, _, second = quick_demo
    assert "reused: no new results" in second  # a plain second run reuses the figures
    png = next((out / "figures").glob("*.png"))
    before = png.stat().st_mtime_ns
    capsys.readouterr()
    assert main(["demo", "--quick", "--out", str(out), "--redraw"]) == 0
    text = capsys.readouterr().out
    assert "computed 0" in text and "reused: no new results" not in text
    assert png.stat().st_mtime_ns > before


def test_demo_layout_default_and_the_earlier_out_folder():
    assert DemoLayout.at() == DemoLayout(Path("checkpoints/demo"), Path("results/demo"), Path("figures/demo"))
    assert DemoLayout.at("demo").checkpoints == Path("demo/checkpoints")  # what earlier versions wrote


def test_demo_budget_always_analyses_the_last_epoch():
    assert DemoBudget(epochs=6, analyse_epochs=(1, 3)).epochs_analysed() == [1, 3, 6]
    assert DemoBudget(epochs=3, analyse_epochs=None).epochs_analysed() == [1, 2, 3]
    assert DemoBudget().epochs_analysed() == [4, 8]


def test_robustness_applies_only_to_inputs_with_a_pixel_range():
    import torch

    from landscape.data import ArrayDataset

    images = ArrayDataset(torch.rand(4, 3, 8, 8), torch.zeros(4, dtype=torch.long), 10, "img", "train")
    assert pixel_range_reason(images) is None
    signals = ArrayDataset(torch.randn(4, 40), torch.zeros(4, dtype=torch.long), 10, "mnist1d", "train")
    assert "pixel range" in pixel_range_reason(signals)
    unscaled = ArrayDataset(torch.randn(4, 3, 8, 8) * 50, torch.zeros(4, dtype=torch.long), 10, "img", "train")
    assert "neither in [0, 1]" in pixel_range_reason(unscaled)


def test_format_table_prints_missing_values_as_a_dash():
    text = format_table({"sgd": {"test_acc": 0.5, "lambda_max": float("nan")}})
    assert text.splitlines()[1].split()[1:3] == ["0.5000", "-"]


def test_demo_rejects_a_bad_epoch_count(capsys):
    assert main(["demo", "--quick", "--epochs", "0", "--out", "/nonexistent"]) == 2
    assert "--epochs 0" in capsys.readouterr().err


def test_demo_rejects_a_bad_epoch_list(capsys):
    assert main(["demo", "--quick", "--analyse-epochs", "two", "--out", "/nonexistent"]) == 2
    assert "--analyse-epochs 'two'" in capsys.readouterr().err
