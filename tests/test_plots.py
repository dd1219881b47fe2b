"""Figures from real results: train two tiny runs, analyse them, plot; check what is drawn.

Ground truth: every plotted line is compared with the numbers in the Dataset it was drawn
from; the numpy SLQ density against the torch one of the analysis; rebinned histograms
against exact sums; the files against their format headers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.patches import StepPatch

from landscape import plots
from landscape.plots.common import PlotError, run_colors, with_run_step

PNG = b"\x89PNG\r\n\x1a\n"
PDF = b"%PDF-"
RUNS = ["sam", "sgd"]  # sorted, as open_results orders them
RHOS = [0.01, 0.05]
OPTIONS = {
    "data": {"n": 32},
    "hessian": {"top_k": 3, "max_samples": 32, "batch_size": 32, "slq_runs": 2, "slq_steps": 10,
                "trace_samples": 12, "grid_points": 200, "hvp_method": "double-backward"},
    "sharpness": {"rho": RHOS, "m": 16, "n": 32, "steps": 2},
    "norm_params": {"bins": 5},
}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Two trained runs (2 epochs, a checkpoint each) and their analysed results folder."""
    from landscape.batch import analyze
    from landscape.config import TrainConfig
    from landscape.trainer import train

    root = tmp_path_factory.mktemp("study")
    ckpts = root / "checkpoints"
    for name, sam in (("sgd", None), ("sam", {"variant": "sam", "rho": 0.05})):
        cfg = TrainConfig.from_dict(dict(
            dataset="synthetic", dataset_kwargs={"num_samples": 64, "input_shape": [6]}, model="mlp",
            model_kwargs={"width": 8, "norm": "batch"}, epochs=2, batch_size=32, lr=0.05, save_every=1,
            sam=sam, out=str(ckpts / name), seed=1))
        train(cfg, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # Lanczos may stop short on 100 params
        summary = analyze(ckpts, "hessian,sharpness,norm_params", options=OPTIONS, out=root / "results",
                          progress=False, threads=1)
    assert summary.ok, summary
    return {"root": root, "ckpts": ckpts, "results": root / "results"}


def _open(study, analysis):
    from landscape.results import open_results

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return open_results(study["results"], analysis)


@pytest.fixture(scope="module")
def sharp(study):
    return _open(study, "sharpness")


@pytest.fixture(scope="module")
def norms(study):
    return _open(study, "norm_params")


@pytest.fixture(scope="module")
def hess(study):
    """The hessian results over (run, step), as open_results combines them."""
    from landscape.results import open_results

    return open_results(study["results"], "hessian")


def _lines(ax):
    return [ln for ln in ax.get_lines() if not ln.get_label().startswith("_child")]


def _labels(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


# ----------------------------------------------------------------------------- sharpness


def test_sharpness_vs_rho_draws_each_run_at_its_last_step(sharp):
    assert sharp.sizes["run"] == 2 and sharp.sizes["step"] == 2
    fig = plots.sharpness_vs_rho(sharp)
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    assert len(ax.containers) == 2  # one errorbar per run
    assert _labels(ax) == RUNS
    last = int(sharp.step.max())
    for run, cont in zip(RUNS, ax.containers):
        line = cont.lines[0]
        np.testing.assert_allclose(line.get_xdata(), RHOS)
        np.testing.assert_allclose(line.get_ydata(), sharp.sharpness_mean.sel(run=run, step=last).values)
        # error bars span mean +- sem
        seg = cont.lines[2][0].get_segments()
        sem = sharp.sharpness_sem.sel(run=run, step=last).values
        np.testing.assert_allclose([s[1, 1] - s[0, 1] for s in seg], 2 * sem, rtol=1e-12)
    assert "radius" in ax.get_xlabel() and "(nats)" in ax.get_ylabel()
    assert f"step {last}" in ax.get_title()


def test_sharpness_vs_rho_at_a_chosen_step_and_missing_step(sharp):
    first = int(sharp.step.min())
    fig = plots.sharpness_vs_rho(sharp, step=first)
    y = fig.axes[0].containers[1].lines[0].get_ydata()
    np.testing.assert_allclose(y, sharp.sharpness_mean.sel(run="sgd", step=first).values)
    with pytest.raises(PlotError, match=r"step=12345 has no 'sharpness_mean' data; steps with data: \[\d+, \d+\]"):
        plots.sharpness_vs_rho(sharp, step=12345)


def test_runs_with_different_last_steps(sharp):
    """An outer join over runs leaves NaN where a run has no checkpoint: each run's own last step."""
    first, last = int(sharp.step.min()), int(sharp.step.max())
    ds = sharp.copy(deep=True)
    for v in ("sharpness_mean", "sharpness_sem"):
        ds[v].loc[{"run": "sam", "step": last}] = np.nan
    fig = plots.sharpness_vs_rho(ds)
    ax = fig.axes[0]
    sam, sgd = (c.lines[0].get_ydata() for c in ax.containers)
    np.testing.assert_allclose(sam, sharp.sharpness_mean.sel(run="sam", step=first).values)
    np.testing.assert_allclose(sgd, sharp.sharpness_mean.sel(run="sgd", step=last).values)
    assert "last step of each run" in ax.get_title()
    # the curve over steps skips the gap; a step only sgd has leaves sam out
    ln = _lines(plots.sharpness_vs_step(ds, rho=0.01).axes[0])[0]
    assert ln.get_label() == "sam" and ln.get_xdata().tolist() == [first]
    fig = plots.sharpness_vs_rho(ds, step=last)
    assert _labels(fig.axes[0]) == ["sgd"]


def test_sharpness_single_file_and_direct_output(study, sharp):
    import torch

    from landscape.analyses.sharpness import sharpness
    from landscape.models import build_model
    from landscape.results import find_results, read_result

    path = next(iter(find_results(study["results"], "sharpness").values()))[0]
    one = read_result(path)
    fig = plots.sharpness_vs_rho(one)
    assert len(fig.axes[0].containers) == 1 and _labels(fig.axes[0]) == [str(one.run.item())]

    torch.manual_seed(0)
    model = build_model("mlp", input_shape=(6,), num_classes=3, width=4)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    raw = sharpness(model, (x, y), rho=[0.01, 0.02, 0.04], m=16, n=32, steps=2)
    fig = plots.sharpness_vs_rho(raw)
    line = fig.axes[0].containers[0].lines[0]
    np.testing.assert_allclose(line.get_ydata(), raw.sharpness_mean.values)
    assert _labels(fig.axes[0]) == ["model"]


def test_sharpness_vs_step_one_panel_per_rho(sharp):
    fig = plots.sharpness_vs_step(sharp)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == len(RHOS)
    for ax, rho in zip(axes, RHOS):
        lines = _lines(ax)
        assert [ln.get_label() for ln in lines] == RUNS
        assert f"{rho:g}" in ax.get_title()
        for run, ln in zip(RUNS, lines):
            np.testing.assert_allclose(ln.get_xdata(), sharp.step.values)
            np.testing.assert_allclose(ln.get_ydata(), sharp.sharpness_mean.sel(run=run, rho=rho).values)
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(bands) == 2
    assert [t.get_text() for t in fig.legends[0].get_texts()] == RUNS

    fig = plots.sharpness_vs_step(sharp, rho=0.05)
    (ax,) = [a for a in fig.axes if a.get_visible()]
    assert len(_lines(ax)) == 2 and _labels(ax) == RUNS
    with pytest.raises(PlotError, match=r"rho=0.07 is not in the sharpness result; stored radii: \[0.01, 0.05\]"):
        plots.sharpness_vs_step(sharp, rho=0.07)


# ----------------------------------------------------------------------------- norm_params


def test_norm_param_histograms_per_layer(norms):
    layers = [str(x) for x in norms.layer.values]
    assert len(layers) == 2  # mlp width 8, one hidden BatchNorm per hidden layer (depth 2)
    fig = plots.norm_param_histograms(norms)
    assert len(fig.axes) == 2 * len(layers)
    last = {run: int(norms.step.max()) for run in RUNS}
    for i, layer in enumerate(layers):
        for j, p in enumerate(("gamma", "beta")):
            ax = fig.axes[i * 2 + j]
            stairs = [a for a in ax.patches if isinstance(a, StepPatch)]
            assert [s.get_label() for s in stairs] == RUNS
            assert layer in ax.get_title()
            for run, s in zip(RUNS, stairs):
                d = norms.sel(run=run, step=last[run], layer=layer, param=p)
                np.testing.assert_array_equal(s.get_data().values, d.histogram.values)
                np.testing.assert_allclose(s.get_data().edges, d.bin_edges.values)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == RUNS
    assert fig.axes[-2].get_xlabel().startswith(r"$\gamma$") and fig.axes[0].get_ylabel() == "channels per bin"


def test_norm_param_histograms_pooled_keeps_every_channel(norms):
    fig = plots.norm_param_histograms(norms, pooled=True)
    assert len(fig.axes) == 2
    last = int(norms.step.max())
    for ax in fig.axes:
        stairs = [a for a in ax.patches if isinstance(a, StepPatch)]
        assert len(stairs) == 2
        for run, s in zip(RUNS, stairs):
            total = int(norms["size"].sel(run=run, step=last).sum())
            assert s.get_data().values.sum() == pytest.approx(total, rel=1e-12)
    # auto: more layers than max_layers -> pooled; a subset of layers and one param
    assert len(plots.norm_param_histograms(norms, max_layers=1).axes) == 2
    layer = str(norms.layer.values[0])
    assert len(plots.norm_param_histograms(norms, params=["beta"], layers=[layer]).axes) == 1
    with pytest.raises(PlotError, match="accepted are"):
        plots.norm_param_histograms(norms, params=["alpha"])
    with pytest.raises(PlotError, match="not in the result"):
        plots.norm_param_histograms(norms, layers=["nope"])


def test_pooled_histograms_with_fixed_ranges_are_exact_sums():
    import torch
    from torch import nn

    from landscape.analyses.norm_params import norm_params

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 7), nn.BatchNorm1d(7), nn.Linear(7, 5), nn.LayerNorm(5))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape) * 0.3 + 1)
    ds = norm_params(m, bins=6, gamma_range=(-1.0, 3.0), beta_range=(-1.0, 3.0))
    fig = plots.norm_param_histograms(ds, pooled=True)
    for ax, p in zip(fig.axes, ("gamma", "beta")):
        (s,) = [a for a in ax.patches if isinstance(a, StepPatch)]
        np.testing.assert_array_equal(s.get_data().values, ds.histogram.sel(param=p).sum("layer").values)
        np.testing.assert_allclose(s.get_data().edges, np.linspace(-1, 3, 7))
        # brute force: numpy histogram of all channels of every layer
        allv = np.concatenate([getattr(mod, "weight" if p == "gamma" else "bias").detach().numpy()
                               for mod in (m[1], m[3])])
        np.testing.assert_array_equal(s.get_data().values, np.histogram(allv, bins=6, range=(-1, 3))[0])


def test_rebin():
    e = np.array([0.0, 1.0, 2.0, 4.0])
    c = np.array([3.0, 1.0, 2.0])
    np.testing.assert_array_equal(plots.rebin(c, e, e), c)
    np.testing.assert_allclose(plots.rebin(c, e, np.array([0.0, 0.5, 3.0, 4.0])), [1.5, 3.5, 1.0])
    np.testing.assert_allclose(plots.rebin(c, e, np.linspace(-1, 5, 13)).sum(), c.sum())
    # outside the target range is dropped
    np.testing.assert_allclose(plots.rebin(c, e, np.array([0.0, 1.0])), [3.0])


# ----------------------------------------------------------------------------- hessian


def test_spectral_density_stored_and_resmoothed(hess):
    fig = plots.spectral_density(hess)
    (ax,) = fig.axes
    assert ax.get_yscale() == "log" and _labels(ax) == RUNS
    last = int(hess.step.max())
    lines = _lines(ax)
    assert len(lines) == 2
    for run, ln in zip(RUNS, lines):
        d = hess.density.sel(run=run, step=last)
        ok = np.isfinite(d.values)
        top = float(ax.get_ylim()[1]) / 3
        y = ln.get_ydata()
        big = y > top * 1e-6
        np.testing.assert_allclose(y[big], d.values[ok][big])
    fig = plots.spectral_density(hess, sigma=0.5)
    for ln in _lines(fig.axes[0]):
        assert np.trapezoid(ln.get_ydata(), ln.get_xdata()) == pytest.approx(1.0, abs=1e-6)
    assert "0.5" in fig.axes[0].get_title()


def test_spectral_density_of_one_file_and_direct_output(study):
    import torch

    from landscape.analyses.hessian import hessian_spectrum
    from landscape.results import find_results, read_result

    (files,) = find_results(study["results"], "hessian").values()
    one = read_result(files[0])
    (ln,) = _lines(plots.spectral_density(one).axes[0])
    np.testing.assert_allclose(ln.get_xdata(), one.eigenvalue.values)
    assert ln.get_label() == str(one.run.item())

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    raw = hessian_spectrum(model, (x, y), top_k=2, slq_runs=2, slq_steps=8, trace_samples=9, grid_points=100,
                           hvp_method="double-backward")
    fig = plots.spectral_density(raw)
    (ln,) = _lines(fig.axes[0])
    top = raw.density.values.max()
    big = raw.density.values > top * 1e-6
    np.testing.assert_allclose(ln.get_ydata()[big], raw.density.values[big])
    assert f"{raw.attrs['sigma']:.3g}" in fig.axes[0].get_title()
    assert len(_lines(plots.top_eigenvalues(raw).axes[0])) == 2  # one point per k


def test_slq_density_matches_the_analysis():
    import torch

    from landscape.analyses.slq import gaussian_density, slq

    A = torch.diag(torch.tensor([-1.0, 0.5, 2.0, 7.0, 7.5], dtype=torch.float64))
    nodes, weights = slq(A, runs=3, steps=4, seed=1)
    grid = torch.linspace(-3, 10, 301, dtype=torch.float64)
    ref = gaussian_density(nodes, weights, grid, 0.3).numpy()
    np.testing.assert_allclose(plots.slq_density(nodes.numpy(), weights.numpy(), grid.numpy(), 0.3), ref,
                               rtol=1e-12, atol=1e-15)


def test_top_eigenvalues_and_trace(hess):
    fig = plots.top_eigenvalues(hess)
    (ax,) = fig.axes
    lines = _lines(ax)
    assert len(lines) == 2 * 3  # runs x k
    assert _labels(ax) == RUNS
    for i, run in enumerate(RUNS):
        for kk in range(3):
            ln = lines[i * 3 + kk]
            np.testing.assert_allclose(ln.get_ydata(), hess.eigenvalues.sel(run=run, k=kk + 1).values)
            np.testing.assert_allclose(ln.get_xdata(), hess.step.values)
    assert len(_lines(plots.top_eigenvalues(hess, k=1).axes[0])) == 2
    with pytest.raises(PlotError, match="k=4"):
        plots.top_eigenvalues(hess, k=4)

    fig = plots.trace(hess)
    (ax,) = fig.axes
    assert [ln.get_label() for ln in _lines(ax)] == RUNS
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2
    for run, ln, band in zip(RUNS, _lines(ax), bands):
        t, se = hess.trace.sel(run=run).values, hess.trace_stderr.sel(run=run).values
        np.testing.assert_allclose(ln.get_ydata(), t)
        ys = band.get_paths()[0].vertices[:, 1]
        np.testing.assert_allclose([ys.min(), ys.max()], [(t - se).min(), (t + se).max()])
    assert "trace" in ax.get_ylabel() and "step" in ax.get_xlabel()


# ----------------------------------------------------------------------------- training curves


def test_history_dataset_from_a_real_run(study):
    from landscape.results import read_json

    info = read_json(study["ckpts"] / "sgd" / "run.json")
    ds = plots.history_dataset(info)
    assert ds.attrs["run"] == "sgd" and ds.train_loss.dims == ("epoch",)
    assert ds.epoch.values.tolist() == [1, 2]
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "step"):
        np.testing.assert_allclose(ds[key].values, [h[key] for h in info["history"]])
        assert ds[key].attrs["long_name"] and "units" in ds[key].attrs
    assert json.loads(ds.attrs["config_json"])["model"] == "mlp"


def test_history_dataset_edge_cases():
    hist = [{"epoch": 1, "step": 5, "train_loss": 2.0}, {"epoch": 2, "step": 10, "train_loss": 1.0, "test_acc": 0.5},
            {"epoch": 2, "step": 10, "train_loss": 0.9, "test_acc": 0.6, "note": "text"}]
    ds = plots.history_dataset({"history": hist}, run="r")
    assert ds.epoch.values.tolist() == [1, 2] and ds.attrs["run"] == "r"
    np.testing.assert_allclose(ds.train_loss.values, [2.0, 0.9])  # a repeated epoch: the later entry
    assert np.isnan(ds.test_acc.values[0]) and ds.test_acc.values[1] == 0.6
    assert "note" not in ds
    with pytest.raises(PlotError, match="empty history"):
        plots.history_dataset({"config": {}, "history": []})
    with pytest.raises(PlotError, match="no 'history' list"):
        plots.history_dataset({"config": {}})
    with pytest.raises(PlotError, match="'epoch'"):
        plots.history_dataset({"history": [{"step": 1}]})


def test_training_curves_two_runs(study):
    from landscape.results import read_json

    hs = {r: plots.history_dataset(read_json(study["ckpts"] / r / "run.json")) for r in RUNS}
    hs["short"] = plots.history_dataset({"history": [{"epoch": 1, "train_loss": 3.0, "test_loss": 3.1,
                                                       "train_acc": 0.1, "test_acc": 0.1}]})
    fig = plots.training_curves(hs)
    ax_loss, ax_acc = fig.axes
    assert len(_lines(ax_loss)) == len(_lines(ax_acc)) == 2 * 3
    assert _labels(ax_loss) == ["sam", "sgd", "short"]
    assert _labels(ax_acc) == ["train", "test"]
    sam = _lines(ax_acc)[:2]
    np.testing.assert_allclose(sam[0].get_ydata(), 100 * hs["sam"].train_acc.values)
    np.testing.assert_allclose(sam[1].get_ydata(), 100 * hs["sam"].test_acc.values)
    assert sam[1].get_linestyle() == "--"
    assert ax_acc.get_ylabel() == "accuracy (%)" and ax_loss.get_xlabel() == "epoch"
    combined = plots.combine_histories(hs)
    assert combined.sizes == {"run": 3, "epoch": 2} and np.isnan(combined.train_loss.sel(run="short", epoch=2))
    assert len(_lines(plots.training_curves(combined).axes[0])) == 6


# ----------------------------------------------------------------------------- colors, errors


def test_one_color_per_run_everywhere(sharp, hess):
    colors = run_colors(["zeta", "sgd", "sam"])
    assert len(set(colors.values())) == 3
    c1 = [ln.get_color() for ln in _lines(plots.trace(hess, colors=colors).axes[0])]
    c2 = [c.lines[0].get_color() for c in plots.sharpness_vs_rho(sharp, colors=colors).axes[0].containers]
    assert c1 == c2 == [colors["sam"], colors["sgd"]]
    many = run_colors([f"r{i}" for i in range(40)])
    assert len({str(v) for v in many.values()}) == 37  # 8 Okabe-Ito + 9 Tol muted + 20 tab20, then cycling
    from landscape.plots.common import OKABE_ITO, TOL_MUTED

    assert [many[f"r{i}"] for i in range(17)] == [*OKABE_ITO, *TOL_MUTED]  # the colour-blind-safe ones first


def test_wrong_analysis_is_a_clear_error(sharp, norms, hess):
    with pytest.raises(PlotError, match=r"sharpness_vs_rho needs a 'sharpness' result .* analysis='norm_params'"):
        plots.sharpness_vs_rho(norms)
    with pytest.raises(PlotError, match=r"spectral_density needs a 'hessian' result .* analysis='sharpness'"):
        plots.spectral_density(sharp)
    with pytest.raises(PlotError, match=r"norm_param_histograms needs a 'norm_params' result"):
        plots.norm_param_histograms(hess)
    with pytest.raises(PlotError, match="trace needs a 'hessian' result"):
        plots.trace(sharp)
    with pytest.raises(PlotError, match="training_curves needs training histories"):
        plots.training_curves(sharp)
    with pytest.raises(PlotError, match="takes an xarray.Dataset"):
        plots.top_eigenvalues({"eigenvalues": [1.0]})
    no_density = hess.drop_vars(["density"])
    with pytest.raises(PlotError, match="missing density"):
        plots.spectral_density(no_density)
    stripped = xr.Dataset({"x": ("rho", [1.0])})
    with pytest.raises(PlotError, match="no 'analysis' attribute"):
        plots.sharpness_vs_step(stripped)


def test_with_run_step():
    ds = with_run_step(xr.Dataset({"x": ("k", [1.0, 2.0])}))
    assert ds.x.dims == ("step", "run", "k") or set(ds.x.dims) == {"run", "step", "k"}
    assert ds.run.values.tolist() == ["model"] and ds.step.values.tolist() == [0]


# ----------------------------------------------------------------------------- save


def test_save_writes_png_and_pdf_atomically(tmp_path, sharp):
    fig = plots.sharpness_vs_rho(sharp)
    paths = plots.save(fig, tmp_path / "sub" / "fig.png")
    assert [p.name for p in paths] == ["fig.png", "fig.pdf"]
    assert paths[0].read_bytes()[:8] == PNG and paths[0].stat().st_size > 1000
    assert paths[1].read_bytes()[:5] == PDF and paths[1].read_bytes().rstrip().endswith(b"%%EOF")
    assert sorted(os.listdir(tmp_path / "sub")) == ["fig.pdf", "fig.png"]
    # PDFs carry no creation date: re-drawing the same data gives the same bytes
    again = plots.save(plots.sharpness_vs_rho(sharp), tmp_path / "again")
    assert again[1].read_bytes() == paths[1].read_bytes()


def test_save_failure_leaves_no_partial_file(tmp_path, sharp, monkeypatch):
    fig = plots.sharpness_vs_rho(sharp)
    target = tmp_path / "fig.png"
    target.write_bytes(b"old")
    real = fig.savefig

    def broken(fname, **kw):
        real(fname, **kw)  # a complete temp file ...
        Path(fname).write_bytes(Path(fname).read_bytes()[:100])  # ... truncated
        raise OSError("disk full")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        plots.save(fig, tmp_path / "fig")
    assert sorted(os.listdir(tmp_path)) == ["fig.png"] and target.read_bytes() == b"old"


# ----------------------------------------------------------------------------- no torch


def test_plots_never_import_torch(study, tmp_path):
    code = (
        "import sys\n"
        "import landscape.plots, landscape.plots.cli\n"
        "assert 'torch' not in sys.modules, 'import'\n"
        "from landscape.plots.cli import plot_results\n"
        "from landscape.results import find_results, read_result\n"
        f"written, failed = plot_results({str(study['results'])!r}, {str(tmp_path / 'f')!r}, "
        f"runs={str(study['ckpts'])!r}, analyses='sharpness,norm_params', formats=['png'])\n"
        "assert written and not failed, failed\n"
        f"(files,) = find_results({str(study['results'])!r}, 'hessian').values()\n"
        "ds = read_result(files[0])\n"
        "landscape.plots.spectral_density(ds); landscape.plots.top_eigenvalues(ds)\n"
        "assert 'torch' not in sys.modules, 'plotting'\n"
        "print(len(written))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) == 5  # png only


# ----------------------------------------------------------------------------- CLI


FIGS = ["norm_params_hist", "sharpness_accuracy", "sharpness_rho", "sharpness_step", "training_curves"]
HESSIAN_FIGS = ["hessian_density", "hessian_eigenvalues", "hessian_trace"]


def test_cli_draws_every_figure(study, tmp_path, capsys):
    from landscape.cli import main

    out = tmp_path / "figs"
    rc = main(["plot", str(study["results"]), "--analyses", "sharpness,norm_params", "--runs",
               str(study["ckpts"]), "--out", str(out)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"{f}.{e}" for f in FIGS for e in ("png", "pdf"))
    printed = cap.out.split()
    assert sorted(Path(p).name for p in printed) == names
    for f in FIGS:
        assert (out / f"{f}.png").read_bytes()[:8] == PNG


def test_cli_subset_step_and_notes(study, tmp_path, capsys):
    from landscape.cli import main
    from landscape.results import read_json

    step = read_json(study["ckpts"] / "sgd" / "run.json")["history"][0]["step"]
    out = tmp_path / "figs"
    rc = main(["plot", str(study["results"]), "--analyses", "sharpness", "--out", str(out),
               "--step", str(step), "--formats", "png"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    # sharpness_accuracy without --runs: the test accuracy from the run.json beside the checkpoints
    assert sorted(p.name for p in out.iterdir()) == ["sharpness_accuracy.png", "sharpness_rho.png", "sharpness_step.png"]

    # a results folder with only one analysis: the others are skipped with a note
    only = tmp_path / "only_norm"
    for f in study["results"].rglob("norm_params-*.nc"):
        dest = only / f.relative_to(study["results"])
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(f.read_bytes())
    rc = main(["plot", str(only), "--out", str(tmp_path / "f2"), "--formats", "png"])
    cap = capsys.readouterr()
    assert rc == 0
    assert "no 'hessian' results" in cap.err and "no 'sharpness' results" in cap.err
    assert sorted(p.name for p in (tmp_path / "f2").iterdir()) == ["norm_params_hist.png"]

    # a step that is not there: the figure fails, the others are drawn, exit code 1
    rc = main(["plot", str(study["results"]), "--analyses", "sharpness", "--out", str(tmp_path / "f3"),
               "--step", "999999", "--formats", "png,svg"])
    cap = capsys.readouterr()
    assert rc == 1 and "could not draw sharpness_rho: step=999999" in cap.err
    assert sorted(p.name for p in (tmp_path / "f3").iterdir()) == ["sharpness_step.png", "sharpness_step.svg"]


def test_cli_errors(study, tmp_path, capsys):
    from landscape.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["plot", str(empty), "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert "nothing to plot" in err and "landscape analyze" in err and "--runs" in err
    assert not (tmp_path / "f").exists()

    assert main(["plot", str(tmp_path / "missing"), "--out", str(tmp_path / "f")]) == 2
    assert "no such results folder" in capsys.readouterr().err

    assert main(["plot", str(study["results"]), "--analyses", "hesian", "--out", str(tmp_path / "f")]) == 2
    assert "did you mean 'hessian'" in capsys.readouterr().err

    assert main(["plot", str(study["results"]), "--formats", "jpg", "--out", str(tmp_path / "f")]) == 2
    assert "accepted are png, pdf, svg" in capsys.readouterr().err

    # training curves alone from an otherwise empty results folder
    rc = main(["plot", str(empty), "--runs", str(study["ckpts"]), "--out", str(tmp_path / "g")])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["training_curves.pdf", "training_curves.png"]


def test_cli_hessian_figures(study, tmp_path, capsys):
    from landscape.cli import main

    out = tmp_path / "figs"
    rc = main(["plot", str(study["results"]), "--analyses", "hessian", "--out", str(out)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{f}.{e}" for f in HESSIAN_FIGS for e in ("png", "pdf"))


def test_cli_reports_unreadable_results_and_draws_the_rest(study, tmp_path, capsys):
    from landscape.cli import main

    res = tmp_path / "res"
    for f in study["results"].rglob("*.nc"):
        if "sharpness-" in f.name or "norm_params-" in f.name:
            dest = res / f.relative_to(study["results"])
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(f.read_bytes())
    bad = next(res.rglob("sharpness-*.nc"))
    bad.write_bytes(b"not netcdf")
    rc = main(["plot", str(res), "--out", str(tmp_path / "f")])
    cap = capsys.readouterr()
    assert rc == 1
    assert "could not read or combine the 'sharpness' results" in cap.err and "not a readable result file" in cap.err
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["norm_params_hist.pdf", "norm_params_hist.png"]
