"""Per-step training diagnostics (run.json ``diagnostics``) as a Dataset and a figure."""

from __future__ import annotations

import json

import numpy as np
import pytest

from landscape.plots import PlotError, diagnostics_dataset, training_diagnostics
from landscape.plots.cli import plot_results


def _sam_run_json(out="checkpoints/sam"):
    recs = [{"step": s, "epoch": 1 + s // 4, "lr": 0.1, "loss": 2.0 / s, "eps_norm": 0.05,
             "grad_cosine": 0.9 - 0.01 * s, "loss_perturbed": 2.0 / s + 0.1, "sharpness": 0.1} for s in (2, 4, 6)]
    recs.append({**recs[-1], "loss": 0.25})  # a resumed run recorded step 6 again: the later record wins
    return {"config": {"out": out}, "history": [{"epoch": 1, "step": 4, "train_loss": 1.0}], "diagnostics": recs}


def test_diagnostics_dataset_and_figure():
    ds = diagnostics_dataset(_sam_run_json())
    assert ds.attrs["run"] == "sam" and ds["step"].values.tolist() == [2, 4, 6]
    assert float(ds["loss"].sel(step=6)) == 0.25 and np.allclose(ds["sharpness"], 0.1)
    sgd = diagnostics_dataset({"diagnostics": [{"step": 1, "epoch": 1, "lr": 0.1, "loss": 2.0}]}, run="sgd")
    fig = training_diagnostics({"sam": ds, "sgd": sgd})
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_visible()]
    assert labels == ["training loss (nats)", "L(w+eps) - L(w) (nats)", "||eps||", "cos(g(w), g(w+eps))"]
    loss_ax = fig.axes[0]
    assert sorted(line.get_label() for line in loss_ax.get_lines()) == ["sam", "sgd"]
    for bad, msg in (({"history": []}, "no 'diagnostics' list"), ({"diagnostics": []}, "empty"),
                     ({"diagnostics": [{"step": "1"}]}, "integer 'step'")):
        with pytest.raises(PlotError, match=msg):
            diagnostics_dataset(bad)
    with pytest.raises(PlotError, match="needs diagnostics_dataset results"):
        training_diagnostics(diagnostics_dataset({"diagnostics": [{"step": 1, "epoch": 1}]}))


def test_landscape_plot_draws_diagnostics_of_real_runs(tmp_path):
    from landscape import TrainConfig, train

    runs = tmp_path / "checkpoints"
    train(TrainConfig(dataset="synthetic", dataset_kwargs={"num_samples": 32, "input_shape": [4]}, model="mlp",
                      model_kwargs={"width": 4}, epochs=1, batch_size=8, diagnostics_every=1,
                      out=str(runs / "sgd")), progress=False)
    train(TrainConfig(dataset="synthetic", dataset_kwargs={"num_samples": 32, "input_shape": [4]}, model="mlp",
                      model_kwargs={"width": 4}, epochs=1, batch_size=8, out=str(runs / "plain")), progress=False)
    (runs / "sam").mkdir()
    (runs / "sam" / "run.json").write_text(json.dumps(_sam_run_json()))
    (tmp_path / "results").mkdir()
    written, failures = plot_results(tmp_path / "results", tmp_path / "figures", runs=runs, formats=("png",))
    assert failures == []
    assert {p.name for p in written} == {"training_curves.png", "training_diagnostics.png"}
