"""Momentum figures from :func:`landscape.analyses.momentum.momentum_curvature` results.

MSAM (arXiv 2401.12033) argues that the optimizer's momentum points along a direction of high
curvature (Appendix A.4, Fig. A.8: curvature along the momentum, the gradient and random
directions over training, for SGD, SAM and MSAM) and that the momentum has a *negative* cosine
with the next gradient (Section 4.1, Fig. 2C; Appendix A.3). These figures show both:

* :func:`momentum_vs_step`: one panel per direction (momentum, gradient, random: the mean over
  the random directions with their min-max band) and one for the cosine, against training
  steps, one color per run;
* :func:`momentum_directions`: the same curvatures at one checkpoint as grouped bars, with each
  run's cosine in the legend.

A direction of norm 0 (a fresh optimizer, plain SGD without momentum) has no curvature (NaN)
and is left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from landscape.plots.common import (
    COLUMN,
    PlotError,
    axis_label,
    figure,
    integer_axis,
    log_axis,
    options,
    panel_grid,
    require,
    run_colors,
    runs_of,
    select_steps,
    step_note,
    style,
    with_run_step,
)

__all__ = ["momentum_directions", "momentum_vs_step"]

COSINE_LABEL = "cos(momentum, gradient)"
_TITLES = {"momentum": "along the momentum", "gradient": "along the gradient", "random": "along random directions"}


def _curvature_label(ds: xr.Dataset) -> str:
    return axis_label({"units": ds["curvature"].attrs.get("units", "nats")}, r"curvature $u^\top H u$")


def _kinds(ds: xr.Dataset) -> dict[str, list[str]]:
    """``{"momentum": [...], "gradient": [...], "random": ["random_0", ...]}``, kinds present only."""
    names = [str(d) for d in ds["direction"].values]
    out = {"momentum": [n for n in names if n == "momentum"], "gradient": [n for n in names if n == "gradient"],
           "random": [n for n in names if n.startswith("random")]}
    return {k: v for k, v in out.items() if v}


def _series(ds: xr.Dataset, run: str, names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per step of ``run``: mean, min and max of the curvature over ``names`` (NaN directions ignored)."""
    c = ds["curvature"].sel(run=run, direction=names).transpose("step", "direction").values.astype(float)
    ok = np.isfinite(c)
    with np.errstate(invalid="ignore"):
        mean = np.where(ok.any(1), np.nansum(np.where(ok, c, 0.0), 1) / np.maximum(ok.sum(1), 1), np.nan)
        lo = np.where(ok.any(1), np.nanmin(np.where(ok, c, np.inf), 1), np.nan)
        hi = np.where(ok.any(1), np.nanmax(np.where(ok, c, -np.inf), 1), np.nan)
    return mean, lo, hi


def _log_if_wide(ax, values) -> None:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size >= 2 and (v > 0).all() and v.max() / v.min() >= 10:
        log_axis(ax, "y")


def _what(ds: xr.Dataset, kinds: Mapping[str, list[str]]) -> str:
    n = len(kinds.get("random", []))
    parts = [f"random: mean of {n}, band min-max" if n > 1 else ""]
    params = options(ds).get("params")
    if params and params != "all":
        parts.append(f"params: {params}")
    return ", ".join(p for p in parts if p)


def momentum_vs_step(
    ds: xr.Dataset,
    *,
    colors: Mapping[str, Any] | None = None,
) -> Figure:
    """Curvature along momentum, gradient and random directions, and the cosine, over steps.

    Args:
        ds: a momentum result over (run, step): a folder combined by
            :func:`landscape.results.open_results` (dims run, step, direction), one file or the
            direct output of :func:`landscape.analyses.momentum.momentum_curvature`.
        colors: run -> color (default: :func:`~landscape.plots.common.run_colors`).

    Returns:
        The Figure: one panel per direction kind present (titled "curvature along the
        momentum", "... the gradient", "... random directions") and a last panel with the
        cosine between momentum and gradient; one line per run, labelled with the run name.
        Random directions: the mean line and a min-max band over the directions.

    Raises:
        PlotError: not a momentum result.

    Example:
        >>> fig = momentum_vs_step(open_results("results", "momentum"))  # doctest: +SKIP
    """
    require(ds, "momentum_vs_step", "momentum", ("curvature", "cosine"), dims=("direction",))
    ds = with_run_step(ds)
    kinds = _kinds(ds)
    colors = run_colors(runs_of(ds), colors)
    steps = ds["step"].values
    with style():
        fig, axes = panel_grid(len(kinds) + 1, ncols=2)
        for ax, (kind, names) in zip(axes, kinds.items()):
            shown = []
            for run in runs_of(ds):
                mean, lo, hi = _series(ds, run, names)
                ok = np.isfinite(mean)
                if not ok.any():
                    continue
                ax.plot(steps[ok], mean[ok], color=colors[run], marker="o", label=run)
                if len(names) > 1:
                    ax.fill_between(steps[ok], lo[ok], hi[ok], color=colors[run], alpha=0.2, linewidth=0)
                shown.append(mean[ok])
            if shown:
                _log_if_wide(ax, np.concatenate(shown))
            ax.set_title(f"curvature {_TITLES[kind]}")
            ax.set_ylabel(_curvature_label(ds))
        ax = axes[-1]
        for run in runs_of(ds):
            cos = ds["cosine"].sel(run=run).values.astype(float)
            ok = np.isfinite(cos)
            if ok.any():
                ax.plot(steps[ok], cos[ok], color=colors[run], marker="o", label=run)
        ax.axhline(0.0, color="0.6", linewidth=0.8, zorder=0)
        ax.set_title("cosine between momentum and gradient")
        ax.set_ylabel(COSINE_LABEL)
        for a in axes:
            a.set_xlabel(axis_label(ds["step"], "training step"))
            integer_axis(a)
        handles, labels = axes[-1].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside right upper", title="run")
        what = _what(ds, kinds)
        if what:
            fig.suptitle(what, fontsize=9)
    return fig


def momentum_directions(
    ds: xr.Dataset,
    *,
    step: int | None = None,
    colors: Mapping[str, Any] | None = None,
    ax=None,
) -> Figure:
    """Curvature along momentum, gradient and random directions at one step, one bar per run.

    Args:
        ds: a momentum result (see :func:`momentum_vs_step`).
        step: training step shown; ``None`` = each run's last step with data.
        colors: run -> color.
        ax: draw into this Axes instead of a new figure.

    Returns:
        The Figure: one group of bars per direction kind (random: the mean, with a min-max
        error bar), one bar per run, labelled "run (cos = ...)" with the run's cosine between
        momentum and gradient. Log y axis when all curvatures are positive and span a factor
        of 10 or more.

    Raises:
        PlotError: not a momentum result, or no run has data at ``step``.

    Example:
        >>> fig = momentum_directions(open_results("results", "momentum"))  # doctest: +SKIP
    """
    require(ds, "momentum_directions", "momentum", ("curvature", "cosine"), dims=("direction",))
    ds = with_run_step(ds)
    kinds = _kinds(ds)
    chosen = select_steps(ds["curvature"], step)
    colors = run_colors(runs_of(ds), colors)
    width = 0.8 / max(len(chosen), 1)
    x = np.arange(len(kinds))
    values = []
    with style():
        if ax is None:
            fig = figure(COLUMN + 0.6, 2.6)
            ax = fig.add_subplot()
        else:
            fig = ax.figure
        for i, (run, s) in enumerate(chosen.items()):
            d = ds.sel(run=[run], step=[s])
            stats = [_series(d, run, names) for names in kinds.values()]
            mean = np.array([float(m[0]) for m, _, _ in stats])
            lo = np.array([float(v[0]) for _, v, _ in stats])
            hi = np.array([float(v[0]) for _, _, v in stats])
            cos = float(ds["cosine"].sel(run=run, step=s))
            label = f"{run} (cos = {cos:.2f})" if np.isfinite(cos) else run
            ok = np.isfinite(mean)
            err = np.where(ok, np.vstack([mean - lo, hi - mean]), 0.0)
            xs = x - 0.4 + width * (i + 0.5)
            ax.bar(xs[ok], mean[ok], width, color=colors[run], label=label, edgecolor="white", linewidth=0.5)
            if "random" in kinds and len(kinds["random"]) > 1:
                j = list(kinds).index("random")
                if ok[j]:
                    ax.errorbar(xs[j], mean[j], yerr=err[:, j:j + 1], color="0.2", linewidth=0.8, capsize=2)
            values.extend(mean[ok])
        _log_if_wide(ax, values)
        ax.set_xticks(x, [k if k != "random" else f"random ({len(kinds['random'])})" for k in kinds])
        ax.set_xlabel("direction")
        ax.set_ylabel(_curvature_label(ds))
        ax.grid(axis="x", visible=False)
        ax.set_title(", ".join(t for t in ("curvature per direction", step_note(chosen)) if t))
        if not values:
            raise PlotError("momentum_directions: no finite curvature at the chosen steps (all directions of norm 0?)")
        ax.legend(title="run", fontsize=7)
    return fig
