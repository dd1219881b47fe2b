"""m-sharpness figures from :func:`landscape.analyses.sharpness.sharpness` results.

SAM-ON (Section 5.2, Tables 6, 18, 19) compares the adaptive worst-case m-sharpness of
Andriushchenko et al. (2023) across training methods at a few radii; these figures show the same
numbers as curves: sharpness against the radius at one checkpoint, and against training steps.
Error bars are the standard error of the mean over the ``n / m`` batches (``sharpness_sem``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
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
    panel_grid,
    require,
    run_colors,
    runs_of,
    select_steps,
    step_note,
    style,
    with_run_step,
)

__all__ = ["sharpness_vs_rho", "sharpness_vs_step"]

_KIND = {"worst": "worst-case", "average": "average-case", "one-step": "one-step"}


def _ylabel(ds: xr.Dataset) -> str:
    return axis_label({"units": ds["sharpness_mean"].attrs.get("units", "nats")}, "m-sharpness")


def _what(ds: xr.Dataset) -> str:
    """``"worst-case, m = 128"`` (+ the perturbed group when it is not all parameters)."""
    kind = ds.attrs.get("kind")
    parts = [_KIND.get(str(kind), str(kind))] if kind else []
    m = ds.attrs.get("batch_size")
    if m:
        parts.append(f"m = {int(m)}")
    params = _options(ds).get("params")
    if params and params != "all":
        parts.append(f"params: {params}")
    return ", ".join(parts)


def _rho_label(ds: xr.Dataset) -> str:
    norm = {"linf": r"\ell_\infty", "l2": r"\ell_2"}.get(str(ds.attrs.get("norm", "")), "")
    adaptive = bool(int(ds.attrs.get("adaptive", 0)))
    if ds.attrs.get("kind") == "average" and "standard deviation" in str(ds["rho"].attrs.get("long_name", "")):
        return r"perturbation std. $\rho$" + (r" (in units of $|w|$)" if adaptive else "")
    ball = (r"adaptive " if adaptive else "") + (f"${norm}$ " if norm else "")
    return rf"{ball}radius $\rho$"


def _options(ds: xr.Dataset) -> dict[str, Any]:
    try:
        return dict(json.loads(str(ds.attrs.get("config_json", "{}"))))
    except (ValueError, TypeError):
        return {}


def _log_if_wide(ax, values: np.ndarray) -> None:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size >= 2 and (v > 0).all() and v.max() / v.min() >= 10:
        log_axis(ax, "x")


def sharpness_vs_rho(
    ds: xr.Dataset,
    *,
    step: int | None = None,
    colors: Mapping[str, Any] | None = None,
    ax=None,
) -> Figure:
    """Mean m-sharpness against the radius, one line with standard-error bars per run.

    Args:
        ds: a sharpness result: one file, a folder combined by
            :func:`landscape.results.open_results` (dims run, step, rho, batch) or the direct
            output of :func:`landscape.analyses.sharpness.sharpness`.
        step: training step shown; ``None`` = each run's last step with data.
        colors: run -> color (default: :func:`~landscape.plots.common.run_colors`).
        ax: draw into this Axes instead of a new figure.

    Returns:
        The Figure: one errorbar line per run, labelled with the run name.

    Raises:
        PlotError: not a sharpness result, or no run has data at ``step``.

    Example:
        >>> fig = sharpness_vs_rho(open_results("results", "sharpness"))  # doctest: +SKIP
    """
    require(ds, "sharpness_vs_rho", "sharpness", ("sharpness_mean", "sharpness_sem"), dims=("rho",))
    ds = with_run_step(ds)
    chosen = select_steps(ds["sharpness_mean"], step)
    colors = run_colors(runs_of(ds), colors)
    with style():
        fig, ax = _fig_ax(ax)
        for run, s in chosen.items():
            d = ds.sel(run=run, step=s)
            mean, sem = d["sharpness_mean"].values, d["sharpness_sem"].values
            ok = np.isfinite(mean)
            ax.errorbar(d["rho"].values[ok], mean[ok], yerr=np.where(np.isfinite(sem), sem, 0)[ok],
                        color=colors[run], marker="o", capsize=2.5, label=run)
        _log_if_wide(ax, ds["rho"].values)
        ax.set_xlabel(_rho_label(ds))
        ax.set_ylabel(_ylabel(ds))
        ax.set_title(", ".join(t for t in (_what(ds), step_note(chosen)) if t))
        ax.legend(title="run")
    return fig


def sharpness_vs_step(
    ds: xr.Dataset,
    *,
    rho: float | Sequence[float] | None = None,
    colors: Mapping[str, Any] | None = None,
) -> Figure:
    """Mean m-sharpness against training steps: one panel per radius, one color per run.

    Args:
        ds: a sharpness result over (run, step) (see :func:`sharpness_vs_rho`).
        rho: the radius or radii shown (stored values); ``None`` = all.
        colors: run -> color.

    Returns:
        The Figure: one axes per radius (titled with it), each with one line and a
        standard-error band per run, labelled with the run name.

    Raises:
        PlotError: not a sharpness result, or a requested radius is not in the result.
    """
    require(ds, "sharpness_vs_step", "sharpness", ("sharpness_mean", "sharpness_sem"), dims=("rho",))
    ds = with_run_step(ds)
    rhos = _pick_rhos(ds, rho)
    colors = run_colors(runs_of(ds), colors)
    with style():
        fig, axes = panel_grid(len(rhos))
        for ax, r in zip(axes, rhos):
            for run in runs_of(ds):
                d = ds.sel(run=run, rho=r)
                steps = d["step"].values
                mean, sem = d["sharpness_mean"].values, d["sharpness_sem"].values
                ok = np.isfinite(mean)
                if not ok.any():
                    continue
                sem = np.where(np.isfinite(sem), sem, 0.0)
                ax.plot(steps[ok], mean[ok], color=colors[run], marker="o", label=run)
                ax.fill_between(steps[ok], (mean - sem)[ok], (mean + sem)[ok], color=colors[run],
                                alpha=0.2, linewidth=0)
            ax.set_title(rf"$\rho$ = {r:g}")
            ax.set_xlabel(axis_label(ds["step"], "training step"))
            integer_axis(ax)
        for ax in axes:
            if ax.get_subplotspec().is_first_col():
                ax.set_ylabel(_ylabel(ds))
        what = _what(ds)
        if len(rhos) == 1:
            axes[0].set_title(", ".join(t for t in (rf"$\rho$ = {rhos[0]:g}", what) if t))
            axes[0].legend(title="run")
        else:
            handles, labels = axes[0].get_legend_handles_labels()
            fig.legend(handles, labels, loc="outside right upper", title="run")
            if what:
                fig.suptitle(what, fontsize=9)
    return fig


def _pick_rhos(ds: xr.Dataset, rho) -> list[float]:
    stored = [float(r) for r in ds["rho"].values]
    if rho is None:
        return stored
    wanted = [rho] if np.isscalar(rho) else list(rho)
    out = []
    for w in wanted:
        j = int(np.argmin([abs(s - float(w)) for s in stored]))
        if not np.isclose(stored[j], float(w), rtol=1e-6, atol=0):
            raise PlotError(f"rho={w} is not in the sharpness result; stored radii: {stored}")
        out.append(stored[j])
    return out


def _fig_ax(ax):
    if ax is not None:
        return ax.figure, ax
    fig = figure(COLUMN, 2.6)
    return fig, fig.add_subplot()
