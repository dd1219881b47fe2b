"""Histograms of normalization gamma and beta from :func:`landscape.analyses.norm_params.norm_params`.

SAM-ON (Section 5) follows how the affine normalization parameters move under SAM-ON versus
SAM and SGD; these figures overlay, per layer (or pooled over layers), the histogram of gamma
and of beta of each run at one checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from landscape.plots.common import (
    PlotError,
    figure,
    require,
    run_colors,
    runs_of,
    select_steps,
    step_note,
    style,
    with_run_step,
)

__all__ = ["norm_param_histograms", "rebin"]

_SYMBOL = {"gamma": r"$\gamma$ (scale)", "beta": r"$\beta$ (shift)"}


def rebin(counts: np.ndarray, edges: np.ndarray, new_edges: np.ndarray) -> np.ndarray:
    """Counts of a histogram moved onto other bin edges, each source bin spread uniformly.

    Exact (a plain sum) when the edges coincide; otherwise a source bin's count is split in
    proportion to its overlap with each target bin. The total is kept for the part of the
    source range inside the target range.

    Example:
        >>> rebin(np.array([2.0, 4.0]), np.array([0.0, 1.0, 2.0]), np.array([0.0, 0.5, 2.0])).tolist()
        [1.0, 5.0]
    """
    counts = np.asarray(counts, dtype=float)
    edges = np.asarray(edges, dtype=float)
    new_edges = np.asarray(new_edges, dtype=float)
    lo = np.maximum(edges[:-1, None], new_edges[None, :-1])
    hi = np.minimum(edges[1:, None], new_edges[None, 1:])
    width = np.where(edges[1:] > edges[:-1], edges[1:] - edges[:-1], 1.0)
    frac = np.clip(hi - lo, 0.0, None) / width[:, None]
    # A zero-width source bin (cannot come from numpy.histogram, but be safe) falls in one target.
    zero = edges[1:] <= edges[:-1]
    if zero.any():
        for i in np.flatnonzero(zero):
            k = np.clip(np.searchsorted(new_edges, edges[i], side="right") - 1, 0, len(new_edges) - 2)
            frac[i] = 0.0
            frac[i, k] = 1.0
    return counts @ frac


def _valid(counts: np.ndarray, edges: np.ndarray) -> bool:
    return bool(np.isfinite(edges).all() and np.isfinite(counts).all())


def norm_param_histograms(
    ds: xr.Dataset,
    *,
    step: int | None = None,
    params: Sequence[str] = ("gamma", "beta"),
    layers: Sequence[str] | None = None,
    pooled: bool | None = None,
    max_layers: int = 8,
    colors: Mapping[str, Any] | None = None,
) -> Figure:
    """Histograms of gamma / beta per normalization layer (rows) or pooled, one color per run.

    Args:
        ds: a norm_params result: one file, a folder combined by
            :func:`landscape.results.open_results` (dims run, step, layer, param, bin) or the
            direct output of :func:`landscape.analyses.norm_params.norm_params`.
        step: training step shown; ``None`` = each run's last step.
        params: which of ``"gamma"``, ``"beta"`` (one column each).
        layers: layer names to show (default all).
        pooled: one histogram over all layers instead of one row per layer; ``None`` pools
            when there are more than ``max_layers`` layers. Layers' histograms with different
            bin edges are merged by :func:`rebin` onto common edges (exact when the analysis
            was run with fixed ``gamma_range`` / ``beta_range``, else approximate within a bin).
        max_layers: see ``pooled``.
        colors: run -> color.

    Returns:
        The Figure: ``rows x len(params)`` axes, each with one step-histogram (``stairs``) per
        run that has the layer, labelled with the run name.

    Raises:
        PlotError: not a norm_params result, unknown param or layer, or no data at ``step``.
    """
    require(ds, "norm_param_histograms", "norm_params", ("histogram", "bin_edges"), dims=("layer", "param"))
    ds = with_run_step(ds)
    stored_params = [str(p) for p in ds["param"].values]
    bad = [p for p in params if p not in stored_params]
    if bad or not params:
        raise PlotError(f"params={list(params)!r}: accepted are {stored_params}")
    all_layers = [str(x) for x in ds["layer"].values]
    if layers is not None:
        unknown = [x for x in layers if x not in all_layers]
        if unknown:
            raise PlotError(f"layers {unknown} are not in the result; layers: {all_layers}")
        all_layers = list(layers)
    if not all_layers:
        raise PlotError("norm_param_histograms: no layer to show")
    pooled = len(all_layers) > max_layers if pooled is None else bool(pooled)
    chosen = select_steps(ds["histogram"], step)
    colors = run_colors(runs_of(ds), colors)
    rows = ["all layers"] if pooled else all_layers

    with style():
        fig = figure(2.4 * len(params) + 0.4, 1.35 * len(rows) + 0.7)
        axes = fig.subplots(len(rows), len(params), squeeze=False)
        for j, p in enumerate(params):
            for run, s in chosen.items():
                d = ds.sel(run=run, step=s, param=p)
                per_layer = {
                    name: (d["histogram"].sel(layer=name).values.astype(float), d["bin_edges"].sel(layer=name).values)
                    for name in all_layers
                }
                per_layer = {k: v for k, v in per_layer.items() if _valid(*v)}
                if pooled:
                    if not per_layer:
                        continue
                    edges = _common_edges(ds, p, all_layers, chosen)
                    total = sum(rebin(c, e, edges) for c, e in per_layer.values())
                    axes[0, j].stairs(total, edges, color=colors[run], label=run, linewidth=1.3)
                else:
                    for i, name in enumerate(rows):
                        if name in per_layer:
                            c, e = per_layer[name]
                            axes[i, j].stairs(c, e, color=colors[run], label=run, linewidth=1.3)
            for i, name in enumerate(rows):
                ax = axes[i, j]
                ax.set_title(f"{_SYMBOL.get(p, p).split(' ')[0]}, {name}")
                if j == 0:
                    ax.set_ylabel("channels per bin")
                if i == len(rows) - 1:
                    ax.set_xlabel(_SYMBOL.get(p, p))
                if not ax.has_data():
                    ax.text(0.5, 0.5, f"no {p} in this layer", transform=ax.transAxes, ha="center",
                            va="center", color="0.5")
        handles, labels = [], []
        for ax in axes.flat:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        if handles:
            fig.legend(handles, labels, loc="outside upper center", ncols=min(len(labels), 5),
                       title=f"run ({step_note(chosen)})")
    return fig


def _common_edges(ds: xr.Dataset, p: str, layers: list[str], chosen: Mapping[str, int]) -> np.ndarray:
    """Shared bin edges over runs and layers: the stored ones when they all agree, else an even grid."""
    all_edges = []
    for run, s in chosen.items():
        e = ds["bin_edges"].sel(run=run, step=s, param=p, layer=layers).values
        all_edges.extend(row for row in e if np.isfinite(row).all())
    if not all_edges:
        raise PlotError(f"no finite {p} bin edges to pool")
    first = all_edges[0]
    if all(len(e) == len(first) and np.array_equal(e, first) for e in all_edges):
        return np.asarray(first, dtype=float)
    lo = min(float(e[0]) for e in all_edges)
    hi = max(float(e[-1]) for e in all_edges)
    bins = max(len(e) - 1 for e in all_edges)
    return np.linspace(lo, hi, bins + 1)
