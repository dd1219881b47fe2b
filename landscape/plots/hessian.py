"""Hessian figures from :func:`landscape.analyses.hessian.hessian_spectrum` results.

* :func:`spectral_density`: the SLQ density on a log axis, one curve per run (the view of SAM
  Fig. 3 and Ghorbani et al. 2019, where the outliers of the spectrum stand out);
* :func:`top_eigenvalues`: ``lambda_1 ... lambda_k`` against training steps;
* :func:`trace`: the trace estimate against training steps with its standard-error band.

A folder combined by :func:`landscape.results.open_results` aligns each file's density grid by
value, so a run's curve is the finite part of the combined ``density``. Pass ``sigma`` to redraw
every run from the stored SLQ nodes and weights with one common broadening and grid, which is
the fair way to compare runs whose spectra have different widths.
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
    require,
    run_colors,
    runs_of,
    select_steps,
    step_note,
    style,
    with_run_step,
)

__all__ = ["slq_density", "spectral_density", "top_eigenvalues", "trace"]

_WHICH = {"LA": "largest", "SA": "smallest", "LM": "largest |.|"}



def _group_note(ds: xr.Dataset) -> str:
    params = options(ds).get("params", ds.attrs.get("params", "all"))
    return "" if params in (None, "all") else f"parameters: {params}"


def slq_density(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    """``mean_r sum_i w_ri N(grid; node_ri, sigma^2)`` (NaN nodes ignored), in numpy.

    The same Gaussian broadening as :func:`landscape.analyses.slq.gaussian_density`, so plots can
    re-smooth stored nodes without torch. Integrates to 1 when each run's weights sum to 1.

    Example:
        >>> g = np.linspace(-5, 5, 2001)
        >>> d = slq_density(np.array([[0.0, 1.0]]), np.array([[0.5, 0.5]]), g, 0.2)
        >>> round(float(np.trapezoid(d, g)), 6)
        1.0
    """
    if not sigma > 0:
        raise PlotError(f"sigma must be > 0, got {sigma!r}")
    nodes = np.asarray(nodes, dtype=float)
    weights = np.asarray(weights, dtype=float)
    runs = nodes.shape[0] if nodes.ndim == 2 else 1
    ok = np.isfinite(nodes) & np.isfinite(weights)
    th, w = nodes[ok], weights[ok]
    grid = np.asarray(grid, dtype=float)
    out = np.empty_like(grid)
    norm = 1.0 / (sigma * np.sqrt(2.0 * np.pi) * runs)
    for s in range(0, grid.size, 4096):  # chunks keep the (grid, nodes) kernel small
        d = (grid[s : s + 4096, None] - th[None, :]) / sigma
        out[s : s + 4096] = norm * (np.exp(-0.5 * d * d) @ w)
    return out


def spectral_density(
    ds: xr.Dataset,
    *,
    step: int | None = None,
    sigma: float | None = None,
    floor: float = 1e-6,
    colors: Mapping[str, Any] | None = None,
    ax=None,
) -> Figure:
    """Spectral density of the Hessian (log y), one curve per run, at one step.

    Args:
        ds: a hessian result with a density: one file, a folder combined by
            :func:`landscape.results.open_results` (dims run, step, grid, run_slq, node) or the
            direct output of :func:`landscape.analyses.hessian.hessian_spectrum`.
        step: training step shown; ``None`` = each run's last step with a density.
        sigma: ``None`` draws the stored densities; a width redraws every run from its
            ``slq_nodes`` / ``slq_weights`` with this Gaussian broadening on one common grid.
        floor: lower end of the y axis, relative to the highest peak (a log axis needs one;
            the Gaussian tails go down to 0).
        colors: run -> color.
        ax: draw into this Axes instead of a new figure.

    Returns:
        The Figure: one line per run, labelled with the run name.

    Raises:
        PlotError: not a hessian result, computed without ``density``, or no data at ``step``.
    """
    need = ("slq_nodes", "slq_weights") if sigma is not None else ("density",)
    require(ds, "spectral_density", "hessian", need)
    ds = with_run_step(ds)
    chosen = select_steps(ds[need[0]], step)
    colors = run_colors(runs_of(ds), colors)
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if sigma is None:
        for run, s in chosen.items():
            d = ds["density"].sel(run=run, step=s)
            g, y = _grid_values(d), d.values.astype(float)
            ok = np.isfinite(y)
            curves[run] = (g[ok], y[ok])
    else:
        nodes = {run: ds["slq_nodes"].sel(run=run, step=s).values for run, s in chosen.items()}
        allnodes = np.concatenate([n[np.isfinite(n)] for n in nodes.values()])
        grid = np.linspace(allnodes.min() - 5 * sigma, allnodes.max() + 5 * sigma, 2000)
        for run, s in chosen.items():
            w = ds["slq_weights"].sel(run=run, step=s).values
            curves[run] = (grid, slq_density(nodes[run], w, grid, float(sigma)))
    top = max((float(np.max(y)) for _, y in curves.values() if y.size), default=0.0)
    if not top > 0:
        raise PlotError("spectral_density: the stored densities are empty or zero")
    with style():
        fig, ax = _fig_ax(ax, 2.6)
        for run, (g, y) in curves.items():
            ax.plot(g, np.maximum(y, top * floor * 1e-3), color=colors[run], label=run, linewidth=1.2)
        ax.set_yscale("log")
        ax.set_ylim(top * floor, top * 3)
        ax.set_xlabel(r"Hessian eigenvalue $\lambda$")
        ax.set_ylabel("density (SLQ)")
        ax.set_title(", ".join(t for t in (step_note(chosen), _sigma_note(ds, sigma), _group_note(ds)) if t))
        ax.legend(title="run")
    return fig


def _grid_values(d: xr.DataArray) -> np.ndarray:
    """The eigenvalues at which a run's ``density`` is tabulated.

    Either the ``grid`` index itself (one file: each file has its own grid) or a float
    coordinate along ``grid`` (e.g. ``eigenvalue``), which stays per (run, step) when files are
    combined instead of being merged into one index.
    """
    cands = [str(c) for c in d.coords if d[c].dims == ("grid",) and np.issubdtype(d[c].dtype, np.floating)]
    named = [c for c in cands if c != "grid"]
    if named:
        return d[named[0]].values.astype(float)
    if cands:
        return d["grid"].values.astype(float)
    raise PlotError(f"spectral_density: 'density' has no float coordinate of eigenvalues along 'grid' "
                    f"(coords: {list(map(str, d.coords))})")


def _sigma_note(ds: xr.Dataset, sigma: float | None) -> str:
    if sigma is not None:
        return rf"$\sigma$ = {sigma:.3g}"
    if "sigma" in ds.variables and ds["sigma"].size:
        vals = np.unique(ds["sigma"].values[np.isfinite(ds["sigma"].values)])
        return rf"$\sigma$ = {float(vals[0]):.3g}" if vals.size == 1 else ""
    s = ds.attrs.get("sigma")  # an attribute survives combining only while all files share it
    return rf"$\sigma$ = {float(s):.3g}" if s is not None else ""


def top_eigenvalues(
    ds: xr.Dataset,
    *,
    k: int | None = None,
    logy: bool | None = None,
    colors: Mapping[str, Any] | None = None,
    ax=None,
) -> Figure:
    """``lambda_1 ... lambda_k`` against training steps: one color per run, lighter for larger k.

    Args:
        ds: a hessian result over (run, step) with ``eigenvalues(k)``.
        k: show the first ``k`` eigenvalues (default all stored).
        logy: log y axis; ``None`` = when all values are positive and span a factor >= 10.
        colors: run -> color.
        ax: draw into this Axes instead of a new figure.

    Returns:
        The Figure: ``runs x k`` lines; ``lambda_1`` of each run is labelled with the run
        name, the others ``_nolegend_``; the title explains the shades.
    """
    require(ds, "top_eigenvalues", "hessian", ("eigenvalues",), dims=("k",))
    ds = with_run_step(ds)
    ks = [int(x) for x in ds["k"].values]
    if k is not None:
        if not 1 <= int(k) <= len(ks):
            raise PlotError(f"k={k}: the result holds {len(ks)} eigenvalues (k = 1..{len(ks)})")
        ks = ks[: int(k)]
    colors = run_colors(runs_of(ds), colors)
    lam = ds["eigenvalues"].sel(k=ks)
    alphas = np.linspace(1.0, 0.3, len(ks)) if len(ks) > 1 else np.ones(1)
    with style():
        fig, ax = _fig_ax(ax, 2.6)
        for run in runs_of(ds):
            for i, kk in enumerate(ks):
                y = lam.sel(run=run, k=kk).values.astype(float)
                steps = lam["step"].values
                ok = np.isfinite(y)
                if not ok.any():
                    continue
                ax.plot(steps[ok], y[ok], color=colors[run], alpha=float(alphas[i]),
                        linewidth=1.6 if i == 0 else 1.0, marker="o" if i == 0 else None,
                        label=run if i == 0 else "_nolegend_")
        vals = lam.values[np.isfinite(lam.values)]
        if logy is None:
            logy = vals.size > 0 and (vals > 0).all() and vals.max() / vals.min() >= 10
        if logy:
            log_axis(ax, "y")
        which = _WHICH.get(str(options(ds).get("which", "LA")), "")
        ax.set_xlabel(axis_label(ds["step"], "training step"))
        integer_axis(ax)
        ax.set_ylabel(rf"Hessian eigenvalue $\lambda_k$ ({which})" if which else r"Hessian eigenvalue $\lambda_k$")
        shades = rf"$\lambda_{{{ks[0]}}}$ bold, lighter up to $\lambda_{{{ks[-1]}}}$" if len(ks) > 1 else ""
        ax.set_title(", ".join(t for t in (f"top {len(ks)} eigenvalues", shades, _group_note(ds)) if t))
        ax.legend(title="run")
    return fig


def trace(
    ds: xr.Dataset,
    *,
    colors: Mapping[str, Any] | None = None,
    ax=None,
) -> Figure:
    """Hessian trace against training steps, one line per run with a +-1 standard-error band.

    Args:
        ds: a hessian result over (run, step) with ``trace`` and ``trace_stderr``.
        colors: run -> color.
        ax: draw into this Axes instead of a new figure.

    Returns:
        The Figure: one line (and one band) per run, labelled with the run name.
    """
    require(ds, "trace", "hessian", ("trace", "trace_stderr"))
    ds = with_run_step(ds)
    colors = run_colors(runs_of(ds), colors)
    with style():
        fig, ax = _fig_ax(ax, 2.6)
        for run in runs_of(ds):
            t = ds["trace"].sel(run=run).values.astype(float)
            se = ds["trace_stderr"].sel(run=run).values.astype(float)
            steps = ds["step"].values
            ok = np.isfinite(t)
            if not ok.any():
                continue
            se = np.where(np.isfinite(se), se, 0.0)
            ax.plot(steps[ok], t[ok], color=colors[run], marker="o", label=run)
            ax.fill_between(steps[ok], (t - se)[ok], (t + se)[ok], color=colors[run], alpha=0.25, linewidth=0)
        method = options(ds).get("trace_method", "")
        ax.set_xlabel(axis_label(ds["step"], "training step"))
        integer_axis(ax)
        ax.set_ylabel("Hessian trace" + (f" ({method})" if method else ""))
        ax.set_title(", ".join(t for t in (r"band: $\pm$1 standard error", _group_note(ds)) if t))
        ax.legend(title="run")
    return fig


def _fig_ax(ax, height: float):
    if ax is not None:
        return ax.figure, ax
    fig = figure(COLUMN, height)
    return fig, fig.add_subplot()
