"""Per-layer Hessian figures from grouped :func:`landscape.analyses.hessian.hessian_spectrum` results.

A result computed with ``params="each:layer"``, ``"each:stage"`` or a list of groups has a
``group`` dimension (one diagonal Hessian block per layer, stage or spec, in model order).
:func:`layer_spectra` draws, per group, the top eigenvalue of its block (``lambda_max`` for the
default ``which="LA"``) and, when stored, the block's trace: one color per run, and one line per
training step (earlier steps lighter), so how curvature moves between layers during training is
read at a glance.

Example:
    >>> from landscape.results import open_results  # doctest: +SKIP
    >>> fig = layer_spectra(open_results("results", "hessian"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from landscape.plots.common import (
    COLUMN,
    PlotError,
    figure,
    log_axis,
    require,
    run_colors,
    runs_of,
    style,
    with_run_step,
)
from landscape.plots.hessian import _group_note

__all__ = ["is_grouped", "layer_spectra"]

_TOP = {"LA": r"$\lambda_{\max}$", "SA": r"$\lambda_{\min}$", "LM": r"largest $|\lambda|$"}


def _which(ds: xr.Dataset) -> str:
    """The ``which`` option of the result (``"LA"`` when not recorded)."""
    try:
        return str(json.loads(str(ds.attrs.get("config_json", "{}"))).get("which", "LA"))
    except (ValueError, TypeError, AttributeError):
        return "LA"


def is_grouped(ds: xr.Dataset) -> bool:
    """Whether ``ds`` is a per-group Hessian result (it has a ``group`` dimension)."""
    return "group" in ds.dims


def _steps_with_data(da: xr.DataArray, run: str, step: int | None) -> list[int]:
    """The steps of ``run`` at which ``da`` (run, step, group) has a finite value."""
    sub = da.sel(run=run).transpose("step", "group").values.astype(float)
    steps = [int(s) for s, row in zip(da["step"].values, sub) if np.isfinite(row).any()]
    return steps if step is None else [s for s in steps if s == int(step)]


def layer_spectra(
    ds: xr.Dataset,
    *,
    step: int | None = None,
    colors: Mapping[str, Any] | None = None,
    logy: bool | None = None,
) -> Figure:
    """Top eigenvalue (and trace) of each group's Hessian block, groups along x in model order.

    Args:
        ds: a hessian result with a ``group`` dim: the direct output of ``hessian_spectrum(...,
            params="each:layer")``, one result file or a folder combined by
            :func:`landscape.results.open_results` (dims run, step, group, k).
        step: draw only this training step; ``None`` = every step with data, the last one of
            each run bold with markers, earlier ones lighter.
        colors: run -> color.
        logy: log y axes; ``None`` = per panel, when all values are positive and span a factor
            >= 10 (layers often differ by orders of magnitude).

    Returns:
        The Figure: a ``lambda_max`` panel and, when the result holds ``trace``, a trace panel
        below it (with a +-1 standard-error bar at the last step); x tick labels are the group
        names, with the owning module's class where the result has one (``"0 (Conv2d)"``).
        The last step of each run is labelled with the run name, the others ``_nolegend_``.

    Raises:
        PlotError: not a hessian result, no ``group`` dim, or no data at ``step``.

    Example:
        >>> ds = xr.Dataset({"eigenvalues": (("group", "k"), [[4.0, 1.0], [0.5, 0.1]]),
        ...                  "trace": ("group", [9.0, 1.0])}, coords={"group": ["conv", "fc"], "k": [1, 2]},
        ...                 attrs={"analysis": "hessian"})
        >>> fig = layer_spectra(ds)
        >>> [a.get_ylabel() for a in fig.axes]
        ['top eigenvalue $\\\\lambda_{\\\\max}$', 'trace']
    """
    require(ds, "layer_spectra", "hessian", ("eigenvalues",), dims=("group", "k"))
    has_step = "step" in ds.dims or "step" in ds.coords  # a direct analysis output has none
    ds = with_run_step(ds)
    groups = [str(g) for g in ds["group"].values]
    kinds = [str(k) for k in ds["group_module"].values] if "group_module" in ds.coords else [""] * len(groups)
    ticks = [f"{g} ({k})" if k else g for g, k in zip(groups, kinds)]
    lam = ds["eigenvalues"].isel(k=0).transpose("run", "step", "group")
    panels: list[tuple[xr.DataArray, str]] = [(lam, "top eigenvalue " + _TOP.get(_which(ds),
                                                                                  r"$\lambda_1$"))]
    if "trace" in ds.data_vars and ds["trace"].dims and "group" in ds["trace"].dims:
        panels.append((ds["trace"].transpose("run", "step", "group"), "trace"))
    runs = runs_of(ds)
    drawn = {run: _steps_with_data(lam, run, step) for run in runs}
    drawn = {run: s for run, s in drawn.items() if s}
    if not drawn:
        have = sorted({s for run in runs for s in _steps_with_data(lam, run, None)})
        raise PlotError(f"layer_spectra: no eigenvalues at step={step}; steps with data: {have}"
                        if step is not None else "layer_spectra: the result holds no finite eigenvalues")
    colors = run_colors(runs, colors)
    x = np.arange(len(groups))
    units = str(ds["eigenvalues"].attrs.get("units", ""))
    all_steps = sorted({s for steps in drawn.values() for s in steps})
    with style():
        fig = figure(min(max(COLUMN, 0.32 * len(groups) + 1.4), 12.0), 1.1 + 1.9 * len(panels))
        axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
        for ax, (da, label) in zip(axes, panels):
            for run, steps in drawn.items():
                alphas = np.linspace(0.25, 0.6, len(steps) - 1) if len(steps) > 1 else []
                for j, s in enumerate(steps):
                    y = da.sel(run=run, step=s).values.astype(float)
                    last = j == len(steps) - 1
                    ax.plot(x, y, color=colors[run], alpha=1.0 if last else float(alphas[j]),
                            linewidth=1.6 if last else 0.9, marker="o" if last else None, markersize=3.5,
                            label=run if last else "_nolegend_")
                    if last and label == "trace" and "trace_stderr" in ds.data_vars:
                        se = ds["trace_stderr"].sel(run=run, step=s).transpose("group").values.astype(float)
                        ax.errorbar(x, y, yerr=np.where(np.isfinite(se), se, 0.0), fmt="none",
                                    ecolor=colors[run], elinewidth=0.8, capsize=1.5, label="_nolegend_")
            vals = da.values[np.isfinite(da.values)]
            use_log = logy if logy is not None else bool(vals.size and (vals > 0).all() and vals.max() / vals.min() >= 10)
            if use_log:
                log_axis(ax, "y")
            ax.set_ylabel(label if units in ("", "1") else f"{label} ({units})")
            ax.grid(True, axis="x", alpha=0.2)
        axes[0].legend(title="run", fontsize="small")
        bottom = axes[-1]
        bottom.set_xticks(x)
        wide = len(groups) > 6 or sum(map(len, ticks)) > 40
        bottom.set_xticklabels(ticks, rotation=90 if wide else 0, fontsize="small" if wide else None)
        bottom.set_xlabel("parameter group (model order)")
        if not has_step:
            when = ""
        elif len(all_steps) == 1:
            when = f"step {all_steps[0]}"
        else:
            when = f"steps {all_steps[0]}-{all_steps[-1]}, earlier lighter"
        note = _group_note(ds)
        head = "each group's Hessian block" + (f", {when}" if when else "")
        axes[0].set_title("\n".join(t for t in (head, note) if t), fontsize="small")
    return fig
