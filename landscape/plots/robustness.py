"""Robust accuracy against the attack radius, from :func:`landscape.analyses.robustness.robustness`.

SAM-ON (Table 4, Appendix B.4 Tables 14/15) reports robust accuracy at a few radii next to the
clean accuracy; this figure shows them as one curve per run: accuracy (%) against eps, the
clean accuracy drawn at eps = 0 with an open marker (also when eps = 0 was not attacked). l-inf
radii are shown in units of 1/255 (grey levels), as the papers write them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from landscape.plots.common import (
    COLUMN,
    figure,
    require,
    run_colors,
    runs_of,
    select_steps,
    step_note,
    style,
    with_run_step,
)

__all__ = ["robust_accuracy_vs_eps"]


def _eps_axis(ds: xr.Dataset) -> tuple[float, str]:
    """Scale and label of the eps axis: l-inf in 1/255, l2 as it is."""
    norm = str(ds.attrs.get("norm", ""))
    if norm == "Linf":
        return 255.0, r"$\ell_\infty$ radius $\epsilon$ (in 1/255)"
    if norm == "L2":
        return 1.0, r"$\ell_2$ radius $\epsilon$"
    return 1.0, r"radius $\epsilon$"


def robust_accuracy_vs_eps(
    ds: xr.Dataset,
    *,
    step: int | None = None,
    colors: Mapping[str, Any] | None = None,
    ax=None,
) -> Figure:
    """Robust accuracy (%) against eps, one line per run, clean accuracy marked at eps = 0.

    Args:
        ds: a robustness result: one file, a folder combined by
            :func:`landscape.results.open_results` (dims run, step, eps, example) or the direct
            output of :func:`landscape.analyses.robustness.robustness`.
        step: training step shown; ``None`` = each run's last step with data.
        colors: run -> color (default: :func:`~landscape.plots.common.run_colors`).
        ax: draw into this Axes instead of a new figure.

    Returns:
        The Figure: per run a line with filled markers at the attacked radii and an open marker
        for the clean accuracy at eps = 0, labelled with the run name.

    Raises:
        PlotError: not a robustness result, or no run has data at ``step``.

    Example:
        >>> fig = robust_accuracy_vs_eps(open_results("results", "robustness"))  # doctest: +SKIP
    """
    require(ds, "robust_accuracy_vs_eps", "robustness", ("robust_accuracy", "clean_accuracy"), dims=("eps",))
    ds = with_run_step(ds)
    chosen = select_steps(ds["robust_accuracy"], step)
    colors = run_colors(runs_of(ds), colors)
    scale, xlabel = _eps_axis(ds)
    with style():
        if ax is None:
            fig = figure(COLUMN, 2.6)
            ax = fig.add_subplot()
        else:
            fig = ax.figure
        for run, s in chosen.items():
            d = ds.sel(run=run, step=s)
            eps = d["eps"].values.astype(float)
            acc = 100.0 * d["robust_accuracy"].values.astype(float)
            ok = np.isfinite(acc) & (eps > 0)
            order = np.argsort(eps[ok])
            clean = 100.0 * float(d["clean_accuracy"].values)
            xs = np.concatenate([[0.0], scale * eps[ok][order]])
            ys = np.concatenate([[clean], acc[ok][order]])
            ax.plot(xs, ys, color=colors[run], marker="o", label=run)
            ax.plot([0.0], [clean], linestyle="none", marker="o", markersize=6, markerfacecolor="white",
                    markeredgecolor=colors[run], zorder=3)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy (%)")
        top = max((float(np.nanmax(line.get_ydata())) for line in ax.get_lines()), default=100.0)
        ax.set_ylim(0, min(104.0, 1.08 * top + 1.0))  # room for the clean-accuracy marker on top
        attack = ds.attrs.get("attack")
        n = ds.sizes.get("example")
        what = ", ".join(t for t in (str(attack) if attack else "", f"n = {n}" if n else "") if t)
        ax.set_title(", ".join(t for t in (what, step_note(chosen)) if t) + "\n(open marker: clean accuracy)")
        ax.legend(title="run")
    return fig
