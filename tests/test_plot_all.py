"""Every public figure of :mod:`landscape.plots`, drawn from real results, and `landscape plot`.

The figure functions are *discovered* (every function in a ``landscape/plots/*.py`` module's
``__all__`` annotated to return a ``Figure``), so a new one without an entry in :data:`CASES`
fails :func:`test_every_public_figure_has_a_case`.

To register a new figure function ``landscape/plots/MODULE.py:fn``, add one line to
:data:`CASES`::

    "MODULE.fn": Case(lambda r: ((r.result("hessian"),), {}), xlabel="...", ylabel="...", title="..."),

where ``r`` is the module-scoped :class:`Study` (``r.result(analysis)``: the results of the
study folder combined by ``open_results``; ``r.histories``, ``r.diagnostics``, ``r.slice(figure)``;
``r.direct(analysis, **options)``: an analysis' direct output with other options, e.g. a
per-group ``r.direct("hessian", params=..., top_k=2)``), and ``xlabel`` / ``ylabel`` / ``title`` are texts that
some axes of the figure must contain (``title`` also matches the figure's suptitle and legend
titles). A new analysis whose figures need other results: add its options to :data:`OPTIONS`
(the study runs every analysis named there through ``landscape.analyze``).

The study: three tiny runs (SGD, SAM, MSAM; 2 epochs, a checkpoint each) on synthetic data,
every registered analysis at both checkpoints, plus the slices `landscape slice` makes
(interpolation, trajectory plane) - all fast (about 20 s on two shared cores).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import pkgutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib import colors as mcolors
from matplotlib.figure import Figure

import landscape.plots
from landscape.plots.common import run_colors

PNG = b"\x89PNG\r\n\x1a\n"
PDF = b"%PDF-"
RUNS = ["msam", "sam", "sgd"]  # sorted: open_results' order and the CLI's colour order

# Options of every analysis the study runs (tiny: n = 32 examples, a handful of iterations).
OPTIONS: dict[str, Any] = {
    "data": {"n": 32},
    "hessian": {"top_k": 3, "tol": 1e-2, "max_samples": 32, "batch_size": 32, "slq_runs": 2, "slq_steps": 6,
                "trace_samples": 6, "grid_points": 100},
    "sharpness": {"kind": "worst", "norm": "linf", "adaptive": True, "rho": [0.01, 0.05], "m": 16, "n": 32,
                  "steps": 2},
    "momentum": {"random_directions": 3, "batch_size": 32},
    "norm_params": {"bins": 5},
    "feature_rank": {"n": 32, "batch_size": 32},
    # the synthetic inputs are Gaussian around 0: "standardized" with mean 0.5, std 0.1 they lie in [0, 1]
    "robustness": {"n": 16, "steps": 3, "eps": [2 / 255, 8 / 255], "batch_size": 16,
                   "normalization": [[0.5], [0.1]]},
    "slice": {"kind": "random", "ndim": 2, "grid": "-1:1:5", "batch_size": 32},
}


# Analysed at both checkpoints (their figures include curves over steps); the others at the last.
OVER_TIME = ("hessian", "sharpness", "momentum", "feature_rank")


@dataclass(frozen=True)
class Study:
    root: Path
    ckpts: Path
    results: Path

    def result(self, analysis: str):
        """The study's results of ``analysis`` (one option set) combined over (run, step)."""
        return open_hash(self, analysis, None)

    @functools.cached_property
    def histories(self):
        from landscape.plots.cli import run_histories

        return run_histories(self.ckpts)

    @functools.cached_property
    def diagnostics(self):
        from landscape.plots.cli import run_diagnostics

        return run_diagnostics(self.ckpts)

    def direct(self, analysis: str, run: str = "sgd", **options):
        """The direct output (no run/step dimensions) of a registered analysis on ``run``'s last
        analysed checkpoint and the first 32 training examples, e.g.
        ``s.direct("hessian", params="each:layer", top_k=2)``: for a figure of results the study
        folder does not hold (``options``: the analysis' keyword arguments)."""
        from landscape.analyses.registry import get_analysis
        from landscape.checkpoint import load_checkpoint
        from landscape.data import get_dataset

        entry = get_analysis(analysis)
        ckpt = load_checkpoint(self.ckpts / run / "epoch_0002.pt")
        data = get_dataset("synthetic", "train", num_samples=64, input_shape=(6,), noise=0.5)
        extra = entry.extra_inputs(ckpt) if entry.extra_inputs is not None else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return entry.fn(ckpt.model.eval(), (data.x[:32], data.y[:32]), **extra, **options)

    def slice(self, figure: str):
        """The slice result (one option set) that calls for ``figure``: "slice_contour" (2-D
        random, from analyze), "slice_1d", "slice_interpolation", "slice_trajectory"."""
        from landscape.plots.slices import slice_figures
        from landscape.results import find_results

        for h in sorted(find_results(self.results, "slice")):
            ds = open_hash(self, "slice", h)
            if figure in slice_figures(ds):
                return ds
        raise LookupError(f"no slice result calls for {figure}")


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Study:
    return build_study(tmp_path_factory.mktemp("plot_all"))


def build_study(root: Path) -> Study:
    """Train the runs, analyse them, slice them (about 20 s on two shared cores)."""
    from landscape.batch import analyze
    from landscape.cli import main
    from landscape.config import TrainConfig
    from landscape.trainer import train

    ckpts, results = root / "checkpoints", root / "results"
    # sgd trains a third epoch for the trajectory plane (>= 3 checkpoints) and is analysed at the
    # first two only: the final-step figures then match a checkpoint that is not the run's last epoch
    for name, epochs, extra in (("sgd", 3, {}), ("sam", 2, {"sam": {"variant": "sam", "rho": 0.05}}),
                                ("msam", 2, {"msam": {"rho": 0.3}})):
        cfg = TrainConfig.from_dict(dict(
            dataset="synthetic", dataset_kwargs={"num_samples": 64, "input_shape": [6], "noise": 0.5},
            model="mlp", model_kwargs={"width": 8, "norm": "batch"}, epochs=epochs, batch_size=32, lr=0.05,
            save_every=1, diagnostics_every=1, out=str(ckpts / name), seed=1, **extra))
        train(cfg, progress=False)
    both = [ckpts / run / f"epoch_000{e}.pt" for run in RUNS for e in (1, 2)]
    last = [ckpts / run / "epoch_0002.pt" for run in RUNS]
    over_time = [a for a in OPTIONS if a in OVER_TIME]
    at_step = [a for a in OPTIONS if a not in OVER_TIME and a != "data"]
    kw = dict(out=results, progress=False, threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # Lanczos may stop short on ~100 parameters
        assert analyze(both, over_time, options=OPTIONS, **kw).ok
        assert analyze(last, at_step, options=OPTIONS, **kw).ok
    one_d = {"data": OPTIONS["data"], "slice": {**OPTIONS["slice"], "ndim": 1, "grid": "-1:1:7"}}
    assert analyze(last[-1:], "slice", options=one_d, **kw).ok
    # the slices only `landscape slice` makes: an interpolation and a trajectory plane
    common = ["--out", str(results), "--n", "32", "--batch-size", "32", "--threads", "1", "--no-progress"]
    assert main(["slice", str(both[-2]), str(both[-1]), "--grid=-0.5:1.5:5", *common]) == 0
    assert main(["slice", "--trajectory", str(ckpts / "sgd"), "--grid", "5", *common]) == 0
    return Study(root, ckpts, results)


# ----------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    """How to draw one figure function from the study, and what its axes must say."""

    inputs: Callable[[Study], tuple[tuple, dict]]
    xlabel: str = ""
    ylabel: str = ""
    title: str = ""
    runs: bool = True  # one colour per run: each run's colour appears in the figure


def _r(analysis: str, **kwargs) -> Callable[[Study], tuple[tuple, dict]]:
    return lambda s: ((s.result(analysis),), dict(kwargs))


CASES: dict[str, Case] = {
    "hessian.spectral_density": Case(_r("hessian"), xlabel="Hessian eigenvalue", ylabel="density (SLQ)", title="step"),
    "hessian.top_eigenvalues": Case(_r("hessian"), xlabel="training step", ylabel="Hessian eigenvalue",
                                    title="top 3 eigenvalues"),
    "hessian.trace": Case(_r("hessian"), xlabel="training step", ylabel="Hessian trace", title="standard error"),
    "sharpness.sharpness_vs_rho": Case(_r("sharpness"), xlabel="radius", ylabel="m-sharpness (nats)",
                                       title="worst-case"),
    "sharpness.sharpness_vs_step": Case(_r("sharpness"), xlabel="training step", ylabel="m-sharpness (nats)",
                                        title=r"$\rho$ = 0.05"),
    "sharpness.sharpness_vs_accuracy": Case(lambda s: ((s.result("sharpness"), s.histories), {}),
                                            xlabel="m-sharpness (nats)", ylabel="test accuracy (%)",
                                            title=r"$\rho$ = 0.01"),
    "momentum.momentum_vs_step": Case(_r("momentum"), xlabel="training step", ylabel="cos(momentum, gradient)",
                                      title="curvature along the momentum"),
    "momentum.momentum_directions": Case(_r("momentum"), xlabel="direction", ylabel="curvature",
                                         title="curvature per direction"),
    "norm_params.norm_param_histograms": Case(_r("norm_params"), xlabel=r"$\gamma$ (scale)",
                                              ylabel="channels per bin", title="run (step"),
    "feature_rank.feature_rank_bars": Case(_r("feature_rank"), xlabel="layer", ylabel="feature rank", title="n = 32"),
    "feature_rank.feature_rank_vs_step": Case(_r("feature_rank"), xlabel="training step", ylabel="feature rank",
                                              title="n = 32"),
    "robustness.robust_accuracy_vs_eps": Case(_r("robustness"), xlabel=r"$\ell_\infty$ radius", ylabel="accuracy (%)",
                                              title="clean accuracy"),
    "slices.slice_contour": Case(lambda s: ((s.slice("slice_contour"),), {}), xlabel="d1", ylabel="d2",
                                 title="step"),
    "slices.slice_surface": Case(lambda s: ((s.slice("slice_contour"),), {}), xlabel="d1", ylabel="d2",
                                 title="step"),
    "slices.slice_curves": Case(lambda s: ((s.slice("slice_1d"),), {}), xlabel="d1", ylabel="loss (nats)"),
    "slices.interpolation_curves": Case(lambda s: ((s.slice("slice_interpolation"),), {}), xlabel="0 = ",
                                        ylabel="loss (nats)"),
    "slices.trajectory_plane": Case(lambda s: ((s.slice("slice_trajectory"),), {}), xlabel="PC 1",
                                    ylabel="PC 2", title="step"),
    "training.training_curves": Case(lambda s: ((s.histories,), {}), xlabel="epoch", ylabel="accuracy (%)"),
    "diagnostics.training_diagnostics": Case(lambda s: ((s.diagnostics,), {}), xlabel="step",
                                             ylabel="L(w+eps) - L(w) (nats)"),
}


# The per-layer figure of the pergroup branch (landscape/plots/layers.py), registered ahead of its
# merge so that the suite draws it from a real per-layer result as soon as the module exists.
if importlib.util.find_spec("landscape.plots.layers") is not None:
    CASES["layers.layer_spectra"] = Case(
        lambda s: ((s.direct("hessian", params="each:layer", top_k=2, tol=1e-2, max_samples=32, batch_size=32,
                             slq_runs=2, slq_steps=6, trace_samples=6, grid_points=100),), {}),
        xlabel="parameter group", ylabel="top eigenvalue", title="each group's Hessian block")


def public_figures() -> list[str]:
    """``"module.function"`` for every function in a ``landscape.plots`` module's ``__all__``
    (defined there, not re-exported) whose return annotation is ``Figure``; ``common`` holds the
    building blocks (an empty ``figure``), not figures."""
    found = []
    for info in pkgutil.iter_modules(landscape.plots.__path__):
        if info.name == "common":
            continue
        mod = importlib.import_module(f"landscape.plots.{info.name}")
        for name in getattr(mod, "__all__", ()):
            obj = getattr(mod, name)
            if not inspect.isfunction(obj) or obj.__module__ != mod.__name__:
                continue
            ret = inspect.signature(obj).return_annotation
            if ret is Figure or (isinstance(ret, str) and ret.split(".")[-1] == "Figure"):
                found.append(f"{info.name}.{name}")
    return sorted(found)


FIGURE_FUNCTIONS = public_figures()


def test_every_public_figure_has_a_case():
    assert len(FIGURE_FUNCTIONS) >= len(CASES) - 2  # the discovery itself works
    missing = [f for f in FIGURE_FUNCTIONS if f not in CASES]
    assert not missing, f"figure functions without a test: add a Case to CASES in {__file__} for {missing}"
    stale = [c for c in CASES if c not in FIGURE_FUNCTIONS]
    assert not stale, f"CASES entries for functions that no longer exist (or lost their Figure annotation): {stale}"


def _texts(fig: Figure) -> dict[str, list[str]]:
    axes = [ax for ax in fig.axes if ax.get_visible()]
    titles = [t.get_text() for ax in axes for t in (ax.title, ax._left_title, ax._right_title)]
    titles += [fig._suptitle.get_text()] if fig._suptitle is not None else []
    legends = [leg for leg in [*(ax.get_legend() for ax in axes), *fig.legends] if leg is not None]
    titles += [leg.get_title().get_text() for leg in legends]
    return {"xlabel": [ax.get_xlabel() for ax in axes], "ylabel": [ax.get_ylabel() for ax in axes], "title": titles}


def _colours(fig: Figure) -> set[tuple]:
    """Every RGB the figure draws with (lines, patches, collections, texts), rounded."""
    out: set[tuple] = set()

    def add(c):
        arr = np.atleast_2d(mcolors.to_rgba_array(c)) if c is not None and len(np.shape(c)) <= 2 else []
        for row in arr:
            out.add(tuple(np.round(row[:3], 3)))

    for artist in fig.findobj():
        for getter in ("get_color", "get_facecolor", "get_edgecolor", "get_markerfacecolor", "get_markeredgecolor"):
            fn = getattr(artist, getter, None)
            if fn is None:
                continue
            try:
                add(fn())
            except (ValueError, TypeError):
                pass
    return out


@pytest.mark.parametrize("name", FIGURE_FUNCTIONS)
def test_figure_renders_from_a_real_result(name, study, tmp_path):
    if name not in CASES:
        pytest.fail(f"{name}: no Case in CASES of {__file__} (see its docstring)")
    case = CASES[name]
    module, fn_name = name.split(".")
    fn = getattr(importlib.import_module(f"landscape.plots.{module}"), fn_name)
    args, kwargs = case.inputs(study)
    # not the defaults; "model": the run of an analysis' direct output
    colours = run_colors([*RUNS, "model"], {"msam": "#117733", "sam": "#882255", "sgd": "#332288", "model": "#44AA99"})
    if "colors" in inspect.signature(fn).parameters:
        kwargs = {**kwargs, "colors": colours}
    fig = fn(*args, **kwargs)
    assert isinstance(fig, Figure)
    texts = _texts(fig)
    for key in ("xlabel", "ylabel", "title"):
        want = getattr(case, key)
        assert all(isinstance(t, str) for t in texts[key])
        if want:
            assert any(want in t for t in texts[key]), f"{name}: no {key} contains {want!r}: {texts[key]}"
    # every visible panel says what it shows (a twin axis: its y label; panels in a row share x labels)
    for ax in (a for a in fig.axes if a.get_visible()):
        assert ax.get_xlabel() or ax.get_title() or ax.get_ylabel(), f"{name}: a panel without any label"
    if case.runs:
        drawn = _colours(fig)
        first = args[0]
        runs_drawn = (list(first) if isinstance(first, dict) else
                      [str(r) for r in np.atleast_1d(first["run"].values)] if "run" in first.coords else ["model"])
        for run in runs_drawn:
            rgb = tuple(np.round(mcolors.to_rgba(colours[run])[:3], 3))
            assert rgb in drawn, f"{name}: run {run!r} is not drawn in its colour {colours[run]}"
    paths = landscape.plots.save(fig, tmp_path / fn_name, ("png", "pdf"))
    assert [p.read_bytes()[:5] for p in paths] == [PNG[:5], PDF]
    assert all(p.stat().st_size > 1000 for p in paths)


# ----------------------------------------------------------------------------- landscape plot

# Registered figures the study cannot give, with the reason (keep empty where possible).
CLI_SKIPS: dict[str, str] = {}


def _expected_stems(study: Study) -> set[str]:
    """Every FIGURES stem, with its options-hash suffix where an analysis has several option sets."""
    from landscape.plots.cli import FIGURES
    from landscape.results import find_results

    stems = set()
    for analysis, specs in FIGURES.items():
        groups = find_results(study.results, analysis)
        assert groups, f"the study has no {analysis!r} results: add its options to OPTIONS in {__file__}"
        for spec in specs:
            if spec.name in CLI_SKIPS:
                continue
            for h in groups:
                suffix = f"-{h}" if len(groups) > 1 else ""
                ds = study.result(analysis) if len(groups) == 1 else open_hash(study, analysis, h)
                if spec.when is None or spec.when(ds):
                    stems.add(spec.name + suffix)
    return stems


@functools.cache
def open_hash(study: Study, analysis: str, h: str | None):
    """``open_results`` of one option set, read once per study (reading is a good part of the time)."""
    from landscape.results import open_results

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return open_results(study.results, analysis, options_hash=h)


def test_landscape_plot_makes_every_registered_figure(study, tmp_path, capsys, monkeypatch):
    """`landscape plot` over every analysis makes every registered figure, without a note.

    The figures are recorded instead of rendered: each function is rendered to PNG and PDF by
    test_figure_renders_from_a_real_result, and the CLI's files by tests/test_plots.py."""
    from landscape.cli import main

    stems = _drawn_stems(monkeypatch)
    out = tmp_path / "figures"
    assert main(["plot", str(study.results), "--runs", str(study.ckpts), "--out", str(out)]) == 0
    cap = capsys.readouterr()
    assert "could not draw" not in cap.err and "skipped" not in cap.err, cap.err
    made = set(stems)
    assert len(stems) == len(made)
    assert sorted(Path(p).name for p in cap.out.split()) == sorted(f"{m}.{f}" for m in made for f in ("png", "pdf"))
    want = _expected_stems(study) | {"training_curves", "training_diagnostics"}
    assert want == made, f"not drawn: {sorted(want - made)}, unexpected: {sorted(made - want)}"
    slices = {m.split("-")[0] for m in made if m.startswith("slice")}
    assert slices == {"slice_1d", "slice_contour", "slice_surface", "slice_interpolation", "slice_trajectory"}


def _drawn_stems(monkeypatch) -> list[str]:
    """Make ``landscape plot`` record the stems it would save instead of rendering them (fast)."""
    import landscape.plots.cli as cli

    stems: list[str] = []

    def record(fig, path, formats=("png",)):
        assert isinstance(fig, Figure)
        stems.append(Path(path).name)
        return [Path(f"{path}.{f}") for f in formats]

    monkeypatch.setattr(cli, "save", record)
    return stems


def test_landscape_plot_without_runs_finds_the_histories_beside_the_checkpoints(study, tmp_path, monkeypatch):
    from landscape.plots.cli import plot_results

    stems = _drawn_stems(monkeypatch)
    _, failures = plot_results(study.results, tmp_path, analyses="sharpness", formats=("png",))
    assert not failures
    assert sorted(stems) == ["sharpness_accuracy", "sharpness_rho", "sharpness_step"]


def test_over_time_figures_skip_a_single_step_with_the_reason(study, tmp_path, capsys, monkeypatch):
    """One checkpoint per run: the curves over steps are skipped and say why; the rest are drawn."""
    import shutil

    from landscape.plots.cli import FIGURES, plot_results

    one = tmp_path / "one"
    for f in study.results.rglob("*.nc"):
        if f.parent.name == "epoch_0002":
            dest = one / f.relative_to(study.results)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dest)
    names = ",".join(OVER_TIME)
    stems = _drawn_stems(monkeypatch)
    _, failures = plot_results(one, tmp_path / "fig", analyses=names, runs=study.ckpts, formats=("png",))
    assert not failures
    err = capsys.readouterr().err
    over_time = [s.name for a in OVER_TIME for s in FIGURES[a] if not s.at_step]
    assert set(over_time) == {"hessian_eigenvalues", "hessian_trace", "sharpness_step", "feature_rank_step",
                              "momentum_step"}
    for stem in over_time:
        assert stem not in stems
        assert f"{stem}: the" in err and "single training step; skipped (a curve over steps)" in err
    # hessian_layers draws only per-group Hessians (params="each:layer"), which this study lacks.
    at_step = [s.name for a in OVER_TIME for s in FIGURES[a] if s.at_step and s.name != "hessian_layers"]
    assert sorted(stems) == sorted([*at_step, "training_curves", "training_diagnostics"])


def test_the_momentum_figure_shows_the_stored_numbers(study):
    ds = study.result("momentum")
    fig = landscape.plots.momentum_vs_step(ds)
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    assert list(panels) == ["curvature along the momentum", "curvature along the gradient",
                            "curvature along random directions", "cosine between momentum and gradient"]
    colours = run_colors(RUNS)
    for title, direction in (("curvature along the momentum", "momentum"), ("curvature along the gradient", "gradient")):
        lines = {ln.get_label(): ln for ln in panels[title].get_lines() if not ln.get_label().startswith("_")}
        assert set(lines) == set(RUNS)
        for run, ln in lines.items():
            np.testing.assert_allclose(ln.get_ydata(), ds.curvature.sel(run=run, direction=direction).values)
            assert mcolors.same_color(ln.get_color(), colours[run])
    rnd = [d for d in ds.direction.values if str(d).startswith("random")]
    lines = {ln.get_label(): ln for ln in panels["curvature along random directions"].get_lines()
             if not ln.get_label().startswith("_")}
    for run, ln in lines.items():
        np.testing.assert_allclose(ln.get_ydata(), ds.curvature.sel(run=run, direction=rnd).mean("direction").values)
    lines = {ln.get_label(): ln for ln in panels["cosine between momentum and gradient"].get_lines()
             if not ln.get_label().startswith("_")}
    for run, ln in lines.items():
        np.testing.assert_allclose(ln.get_ydata(), ds.cosine.sel(run=run).values)
        assert np.all(np.abs(ln.get_ydata()) <= 1)
    # the bars at one step: the stored curvatures, the cosine in the legend
    fig = landscape.plots.momentum_directions(ds, step=int(ds.step.max()))
    (ax,) = fig.axes
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    last = int(ds.step.max())
    assert labels == [f"{r} (cos = {float(ds.cosine.sel(run=r, step=last)):.2f})" for r in RUNS]
    heights = sorted(round(p.get_height(), 9) for p in ax.patches)
    want = [float(ds.curvature.sel(run=r, step=last, direction=d)) for r in RUNS for d in ("momentum", "gradient")]
    want += [float(ds.curvature.sel(run=r, step=last, direction=rnd).mean()) for r in RUNS]
    assert heights == sorted(round(w, 9) for w in want)


def test_sharpness_vs_accuracy_places_each_run_at_its_final_sharpness_and_test_accuracy(study):
    from landscape.plots.common import PlotError
    from landscape.results import read_json

    ds = study.result("sharpness")
    fig = landscape.plots.sharpness_vs_accuracy(ds, study.histories, rho=0.05)
    (ax,) = fig.axes
    last = int(ds.step.max())
    points = {c.get_label(): c.lines[0] for c in ax.containers}
    assert set(points) == set(RUNS)
    for run, ln in points.items():
        # sgd trained a third epoch; its figure shows the last analysed checkpoint's epoch
        acc = next(h["test_acc"] for h in read_json(study.ckpts / run / "run.json")["history"] if h["step"] == last)
        assert ln.get_xdata()[0] == pytest.approx(float(ds.sharpness_mean.sel(run=run, step=last, rho=0.05)))
        assert ln.get_ydata()[0] == pytest.approx(100 * acc)
    assert sorted(t.get_text() for t in ax.texts) == RUNS  # the points are labelled
    # at the first checkpoint: the first epoch's accuracy
    first = int(ds.step.min())
    fig = landscape.plots.sharpness_vs_accuracy(ds, study.histories, rho=0.01, step=first)
    ln = next(c.lines[0] for c in fig.axes[0].containers if c.get_label() == "sgd")
    assert ln.get_ydata()[0] == pytest.approx(100 * read_json(study.ckpts / "sgd" / "run.json")["history"][0]["test_acc"])
    # a run without a history is named; none at all is an error naming what is needed
    fig = landscape.plots.sharpness_vs_accuracy(ds, {"sgd": study.histories["sgd"]})
    assert "no test accuracy: msam, sam" in fig._suptitle.get_text()
    with pytest.raises(PlotError, match="no run has a recorded test accuracy"):
        landscape.plots.sharpness_vs_accuracy(ds, {"other": study.histories["sgd"]})
    with pytest.raises(PlotError, match="rho=0.2 is not in the sharpness result"):
        landscape.plots.sharpness_vs_accuracy(ds, study.histories, rho=0.2)


def test_the_readme_lists_every_figure_landscape_plot_makes():
    """The README's "Figures" table names exactly the registered figures (and their functions)."""
    import re

    from landscape.plots.cli import FIGURES

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Figures"):]
    section = section[: section.index("\n## ", 3)]
    rows = re.findall(r"^\| `([a-z0-9_]+)` \|.*\| `([a-z0-9_]+)` \|$", section, flags=re.M)
    listed = dict(rows)
    registered = {s.name: s.fn.__name__ for specs in FIGURES.values() for s in specs}
    registered.update(training_curves="training_curves", training_diagnostics="training_diagnostics")
    # listed ahead of the merge of the branch that adds it (landscape/plots/layers.py)
    if "hessian_layers" not in registered and importlib.util.find_spec("landscape.plots.layers") is None:
        assert listed.pop("hessian_layers") == "layer_spectra"
    assert listed == registered


def test_robust_accuracy_vs_eps_of_a_real_result(study):
    """Each run's line: the clean accuracy at eps = 0, then the robust accuracies at eps in 1/255."""
    ds = study.result("robustness")
    fig = landscape.plots.robust_accuracy_vs_eps(ds)
    (ax,) = fig.axes
    lines = {ln.get_label(): ln for ln in ax.get_lines() if not ln.get_label().startswith("_")}
    assert set(lines) == set(RUNS)
    eps = ds.eps.values
    for run, ln in lines.items():
        d = ds.sel(run=run).dropna("step", how="all", subset=["robust_accuracy"]).isel(step=-1)
        np.testing.assert_allclose(ln.get_xdata(), np.concatenate([[0.0], 255 * np.sort(eps)]))
        want = np.concatenate([[float(d.clean_accuracy)], d.robust_accuracy.sortby("eps").values])
        np.testing.assert_allclose(ln.get_ydata(), 100 * want)
        assert np.all(ln.get_ydata()[1:] <= ln.get_ydata()[0] + 1e-9)  # an attack never raises the accuracy
    assert "(in 1/255)" in ax.get_xlabel() and "apgd-ce, n = 16" in ax.get_title()


def test_figures_of_an_analysis_direct_output(study):
    """An analysis' own Dataset (no run/step dimensions) draws as run "model" at step 0."""
    ds = study.direct("momentum", random_directions=2, batch_size=32)
    assert "run" not in ds.dims and "step" not in ds.dims
    (ax,) = landscape.plots.momentum_directions(ds).axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [f"model (cos = {float(ds.cosine):.2f})"]
    assert sorted(round(p.get_height(), 9) for p in ax.patches) == sorted(
        round(v, 9) for v in (float(ds.curvature.sel(direction="momentum")), float(ds.curvature.sel(direction="gradient")),
                              float(ds.curvature.sel(direction=["random_0", "random_1"]).mean())))
