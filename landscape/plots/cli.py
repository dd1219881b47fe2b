"""``landscape plot``: every figure that a results folder (and run folders) can give.

Example::

    landscape plot results/ --runs checkpoints/ --out figures/
    landscape plot results/ --analyses sharpness --step 3900 --out figures/

The lead's ``landscape/cli.py`` calls :func:`add_plot_parser`; :func:`plot_results` is the
same as a function.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from landscape.config import did_you_mean
from landscape.plots.common import PlotError, run_colors, save
from landscape.plots.diagnostics import diagnostics_dataset, training_diagnostics
from landscape.plots.feature_rank import feature_rank_bars, feature_rank_vs_step
from landscape.plots.hessian import spectral_density, top_eigenvalues, trace
from landscape.plots.momentum import momentum_directions, momentum_vs_step
from landscape.plots.norm_params import norm_param_histograms
from landscape.plots.robustness import robust_accuracy_vs_eps
from landscape.plots.sharpness import sharpness_vs_accuracy, sharpness_vs_rho, sharpness_vs_step
from landscape.plots.slices import (
    interpolation_curves,
    slice_contour,
    slice_curves,
    slice_figures,
    slice_surface,
    trajectory_plane,
)
from landscape.plots.training import history_dataset, training_curves

__all__ = ["FIGURES", "add_plot_parser", "histories_beside", "plot_results", "run_diagnostics", "run_plot"]


@dataclass(frozen=True)
class FigureSpec:
    """One figure drawn from one analysis: file stem, function, variables it needs.

    ``at_step``: the function takes ``step=`` (a figure at one checkpoint); otherwise it is a
    curve over training steps and is skipped when the results hold a single step.
    ``when``: drawn only for results it accepts (a slice result calls for other figures in 1-D
    and 2-D, for an interpolation and for a trajectory); the others are left out silently.
    ``histories``: the function also takes the runs' training histories (``histories=``, run ->
    :func:`~landscape.plots.training.history_dataset`); skipped with a note when there are none.
    """

    name: str
    fn: Callable[..., Any]
    needs: tuple[str, ...]
    at_step: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)
    when: Callable[[xr.Dataset], bool] | None = None
    histories: bool = False


def _slice_spec(stem: str, fn: Callable[..., Any]) -> FigureSpec:
    """A slice figure, drawn when :func:`~landscape.plots.slices.slice_figures` calls for it."""
    return FigureSpec(stem, fn, ("loss",), at_step=True, when=lambda ds: stem in slice_figures(ds))


FIGURES: dict[str, tuple[FigureSpec, ...]] = {
    "hessian": (
        FigureSpec("hessian_density", spectral_density, ("density",), at_step=True),
        FigureSpec("hessian_eigenvalues", top_eigenvalues, ("eigenvalues",)),
        FigureSpec("hessian_trace", trace, ("trace", "trace_stderr")),
    ),
    "sharpness": (
        FigureSpec("sharpness_rho", sharpness_vs_rho, ("sharpness_mean", "sharpness_sem"), at_step=True),
        FigureSpec("sharpness_step", sharpness_vs_step, ("sharpness_mean", "sharpness_sem")),
        FigureSpec("sharpness_accuracy", sharpness_vs_accuracy, ("sharpness_mean", "sharpness_sem"),
                   at_step=True, histories=True),
    ),
    "momentum": (
        FigureSpec("momentum_directions", momentum_directions, ("curvature", "cosine"), at_step=True),
        FigureSpec("momentum_step", momentum_vs_step, ("curvature", "cosine")),
    ),
    "norm_params": (
        FigureSpec("norm_params_hist", norm_param_histograms, ("histogram", "bin_edges"), at_step=True),
    ),
    "feature_rank": (
        FigureSpec("feature_rank_layers", feature_rank_bars, ("rank",), at_step=True),
        FigureSpec("feature_rank_step", feature_rank_vs_step, ("rank",)),
    ),
    "robustness": (
        FigureSpec("robustness_eps", robust_accuracy_vs_eps, ("robust_accuracy", "clean_accuracy"), at_step=True),
    ),
    "slice": (
        _slice_spec("slice_1d", slice_curves),
        _slice_spec("slice_interpolation", interpolation_curves),
        _slice_spec("slice_contour", slice_contour),
        _slice_spec("slice_trajectory", trajectory_plane),
        _slice_spec("slice_surface", slice_surface),
    ),
}


def _note(text: str) -> None:
    print(f"landscape plot: {text}", file=sys.stderr)


def parse_plot_analyses(text: str | Sequence[str] | None) -> list[str]:
    """``"hessian,sharpness"`` -> names, checked against :data:`FIGURES` (``None`` = all)."""
    if text is None:
        return list(FIGURES)
    items = text.split(",") if isinstance(text, str) else list(text)
    names: list[str] = []
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        if item not in FIGURES:
            raise PlotError(f"--analyses: no figures for {item!r}" + did_you_mean(item, FIGURES)
                            + f"; accepted: {', '.join(FIGURES)}")
        if item not in names:
            names.append(item)
    if not names:
        raise PlotError(f"--analyses is empty; accepted: {', '.join(FIGURES)}")
    return names


def _run_jsons(folder: str | Path):
    """``(run name, path, parsed run.json)`` under ``folder``; unreadable files noted and skipped.

    The run name is the run folder relative to ``folder`` (``folder``'s own name when it is a
    run folder itself), as ``landscape analyze`` names runs, so colors and names match the
    results.
    """
    from landscape.results import read_json

    folder = Path(folder)
    if not folder.is_dir():
        raise PlotError(f"--runs {folder}: no such folder")
    for path in sorted(folder.rglob("run.json")):
        rel = path.parent.resolve().relative_to(folder.resolve()).as_posix()
        name = folder.resolve().name if rel == "." else rel
        try:
            yield name, path, read_json(path)
        except (ValueError, OSError) as e:
            _note(f"skipped {path}: {e}")


def run_histories(folder: str | Path) -> dict[str, xr.Dataset]:
    """``run.json`` files under ``folder`` as :func:`history_dataset` s, by run name.

    Runs without a finished epoch are skipped with a note.
    """
    out: dict[str, xr.Dataset] = {}
    for name, path, info in _run_jsons(folder):
        try:
            out[name] = history_dataset(info, run=name)
        except (PlotError, ValueError) as e:
            _note(f"skipped {path}: {e}")
    return out


def histories_beside(ds: xr.Dataset) -> dict[str, xr.Dataset]:
    """Training histories of a combined result's runs from the ``run.json`` beside their
    checkpoints (the ``checkpoint`` coordinate, as ``landscape analyze`` recorded it: relative to
    its working directory), by run name; runs whose ``run.json`` is not found are left out."""
    from landscape.results import ResultError, read_json

    out: dict[str, xr.Dataset] = {}
    if "checkpoint" not in ds.coords or "run" not in ds.dims:
        return out
    for run in (str(r) for r in ds["run"].values):
        paths = {str(p) for p in np.atleast_1d(ds["checkpoint"].sel(run=run).values) if str(p)}
        for p in sorted(paths):
            run_json = Path(p).parent / "run.json"
            if run_json.is_file():
                try:
                    out[run] = history_dataset(read_json(run_json), run=run)
                    break
                except (ResultError, PlotError, ValueError) as e:
                    _note(f"skipped {run_json}: {e}")
    return out


def run_diagnostics(folder: str | Path) -> dict[str, xr.Dataset]:
    """The per-step ``diagnostics`` of the ``run.json`` files under ``folder``, by run name
    (runs trained without ``diagnostics_every`` have none and are left out silently)."""
    out: dict[str, xr.Dataset] = {}
    for name, path, info in _run_jsons(folder):
        if isinstance(info, dict) and info.get("diagnostics"):
            try:
                out[name] = diagnostics_dataset(info, run=name)
            except PlotError as e:
                _note(f"skipped the diagnostics of {path}: {e}")
    return out


def plot_results(
    results: str | Path,
    out: str | Path,
    *,
    analyses: str | Sequence[str] | None = None,
    runs: str | Path | None = None,
    step: int | None = None,
    formats: Sequence[str] = ("png", "pdf"),
) -> tuple[list[Path], list[str]]:
    """Draw every figure the results folder (and ``runs``' ``run.json`` files) can give.

    Args:
        results: a folder written by ``landscape analyze`` (may hold no result when ``runs``
            has training histories).
        out: folder for the figures, ``<figure>.png`` and ``.pdf`` (``<figure>-<options hash>``
            when an analysis was run with several option sets).
        analyses: names or a comma list among :data:`FIGURES` (default all); missing ones are
            skipped with a note on stderr.
        runs: a checkpoints folder; its ``run.json`` files give ``training_curves`` and, for
            runs trained with ``diagnostics_every``, ``training_diagnostics``.
        step: the step of the one-checkpoint figures (default: each run's last).
        formats: file formats per figure.

    Returns:
        ``(files written, failures)``; a failure is ``"figure: reason"``.

    Raises:
        PlotError: the results folder does not exist, or nothing at all could be plotted.
    """
    from landscape.results import ResultError, find_results, open_results

    names = parse_plot_analyses(analyses)
    results, out = Path(results), Path(out)
    if not results.is_dir():
        raise PlotError(f"{results}: no such results folder")
    datasets: list[tuple[str, str, xr.Dataset]] = []  # (analysis, file suffix, dataset)
    failures: list[str] = []
    for name in names:
        groups = find_results(results, name)
        if not groups:
            _note(f"no {name!r} results under {results}; skipped")
            continue
        for h in sorted(groups):
            suffix = f"-{h}" if len(groups) > 1 else ""
            try:
                with warnings.catch_warnings():
                    # xarray's notice about future combine defaults: nothing a user can act on here
                    warnings.simplefilter("ignore", FutureWarning)
                    datasets.append((name, suffix, open_results(results, name, options_hash=h)))
            except (ResultError, ValueError) as e:  # ValueError: xarray could not combine the files
                failures.append(f"{name}{suffix}: could not read or combine the results: {e}")
                _note(f"could not read or combine the {name!r} results with options {h}: {e}")
    histories = run_histories(runs) if runs is not None else {}
    diagnostics = run_diagnostics(runs) if runs is not None else {}
    if runs is not None and not histories:
        _note(f"no run.json with a finished epoch under {runs}; no training curves")
    if not datasets and not histories:
        if failures:
            raise PlotError("no figure could be drawn:\n  " + "\n  ".join(failures))
        raise PlotError(
            f"nothing to plot: {results} holds no readable results of {', '.join(names)} "
            f"(files <run>/<checkpoint>/<analysis>-<hash>.nc written by `landscape analyze`)"
            + ("" if runs is not None else "; pass --runs CHECKPOINTS to plot training curves")
        )
    all_runs = sorted({str(r) for _, _, ds in datasets for r in ds["run"].values} | set(histories) | set(diagnostics))
    colors = run_colors(all_runs)
    written: list[Path] = []

    def draw(stem: str, make: Callable[[], Any]) -> None:
        try:
            fig = make()
        except PlotError as e:
            failures.append(f"{stem}: {e}")
            _note(f"could not draw {stem}: {e}")
            return
        for p in save(fig, out / stem, formats):
            written.append(p)
            print(p)

    for name, suffix, ds in datasets:
        for spec in FIGURES[name]:
            stem = spec.name + suffix
            if spec.when is not None and not spec.when(ds):
                continue
            missing = [v for v in spec.needs if v not in ds.variables]
            if missing:
                _note(f"{stem}: the {name!r} results hold no {', '.join(missing)}; skipped")
                continue
            if not spec.at_step and ds.sizes.get("step", 1) < 2:
                _note(f"{stem}: the {name!r} results hold a single training step; skipped (a curve over steps)")
                continue
            kwargs = dict(spec.kwargs, colors=colors)
            if spec.at_step:
                kwargs["step"] = step
            if spec.histories:
                found = dict(histories)
                if any(str(r) not in found for r in ds["run"].values):  # --runs wins over run.json found by path
                    found = {**histories_beside(ds), **histories}
                if not found:
                    _note(f"{stem}: no training history (run.json) for the {name!r} results; skipped "
                          "(pass --runs CHECKPOINTS)")
                    continue
                kwargs["histories"] = found
            draw(stem, lambda spec=spec, ds=ds, kwargs=kwargs: spec.fn(ds, **kwargs))
    if histories:
        draw("training_curves", lambda: training_curves(histories, colors=colors))
    if diagnostics:
        draw("training_diagnostics", lambda: training_diagnostics(diagnostics, colors=colors))
    if not written and failures:
        raise PlotError("no figure could be drawn:\n  " + "\n  ".join(failures))
    return written, failures


def add_plot_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``landscape plot`` on the subparsers of the main command line."""
    p = sub.add_parser(
        "plot", help="draw figures from a results folder (and training curves from run folders)",
        description="Draw every figure the results of `landscape analyze` allow: Hessian density, "
                    "eigenvalues and trace; sharpness vs rho, vs step and test accuracy vs sharpness; "
                    "curvature along momentum, gradient and random directions; feature rank; robust "
                    "accuracy vs eps; normalization-parameter "
                    "histograms; loss-landscape slices (1-D curves, interpolation, 2-D contour and "
                    "surface, trajectory plane); and, with --runs, training curves. Missing analyses are skipped.",
    )
    p.add_argument("results", metavar="RESULTS_DIR", help="folder written by `landscape analyze --out`")
    p.add_argument("--analyses", default=None, help=f"comma list among {','.join(FIGURES)} (default all)")
    p.add_argument("--runs", metavar="CKPT_DIR", default=None,
                   help="checkpoints folder: training curves from each run's run.json")
    p.add_argument("--out", required=True, help="folder for the figures (PNG and PDF)")
    p.add_argument("--step", type=int, default=None,
                   help="training step of the one-checkpoint figures (default: each run's last)")
    p.add_argument("--formats", default="png,pdf", help="comma list of file formats (default png,pdf)")
    p.set_defaults(func=run_plot)


def run_plot(args: argparse.Namespace) -> int:
    formats = [f.strip().lower() for f in str(args.formats).split(",") if f.strip()]
    bad = [f for f in formats if f not in ("png", "pdf", "svg")]
    if bad or not formats:
        raise PlotError(f"--formats {args.formats!r}: accepted are png, pdf, svg")
    written, failures = plot_results(args.results, args.out, analyses=args.analyses, runs=args.runs,
                                     step=args.step, formats=formats)
    _note(f"{len(written)} files written to {args.out}" + (f"; {len(failures)} failed" if failures else ""))
    return 1 if failures else 0
