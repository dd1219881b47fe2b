"""Loss-landscape figures from :func:`landscape.analyses.slices.loss_slice` results.

The views of Li et al. (2018), "Visualizing the loss landscape of neural nets" (arXiv:1712.09913),
as used by SAM (Foret et al., arXiv:2010.01412) Fig. 1 and Momentum-SAM (arXiv:2401.12033) Fig. 4:

* :func:`slice_contour`: a 2-D slice as filled contours with labelled levels, the centre (the
  checkpoint itself) and the checkpoints that lie on the plane (``point_*``) marked;
* :func:`slice_surface`: the same slice as a 3-D surface;
* :func:`slice_curves`: 1-D slices of several runs overlaid, one color per run;
* :func:`trajectory_plane`: a training trajectory drawn in step order on its PCA plane (Li et
  al. Section 7), over the loss contours of that plane, with the explained variance on the axes;
* :func:`interpolation_curves`: loss and accuracy along the line between two checkpoints
  (alpha = 0 at the first, 1 at the second) on two y axes;
* :func:`slice_figures`: which of these a result calls for (from ``ndim`` and ``direction_kind``).

Every function takes one result file (:func:`landscape.results.read_result`), a folder combined
over (run, step) (:func:`landscape.results.open_results`), an analysis' direct output, or (for
the 1-D figures) a dict ``run name -> Dataset``. ``log=True`` spaces the loss levels (2-D) or the
loss axis (1-D) logarithmically, which keeps the basin visible when the loss far from the centre
is orders of magnitude larger. Nothing here imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from landscape.plots.common import (
    COLUMN,
    PlotError,
    axis_label,
    figure,
    log_axis,
    require,
    run_colors,
    runs_of,
    select_steps,
    step_note,
    style,
    with_run_step,
)

__all__ = [
    "interpolation_curves",
    "slice_contour",
    "slice_curves",
    "slice_figures",
    "slice_grid",
    "slice_surface",
    "trajectory_plane",
]

_KIND = {
    "random": "random directions",
    "momentum": "momentum direction",
    "gradient": "gradient direction",
    "eigenvector": "Hessian eigenvectors",
    "interpolation": "interpolation",
    "plane": "plane through three checkpoints",
    "trajectory": "PCA plane of the trajectory",
    "given": "given directions",
}
_NORMALIZATION = {"filter": "filter-normalized", "layer": "layer-normalized", "model": "model-normalized"}
_TICKS = "{x:.3g}"  # colorbar ticks sit on the levels: 0.786, not 0.7863
_CENTRE = dict(marker="*", s=90, color="white", edgecolors="black", linewidths=0.8, zorder=5)


# --------------------------------------------------------------------------------------------
# Reading a result


def _as_dataset(ds: xr.Dataset | Mapping[str, xr.Dataset], figure_name: str, dims: Sequence[str]) -> xr.Dataset:
    """One Dataset over (run, step, ...): a dict of per-run results is combined by its keys."""
    if isinstance(ds, Mapping) and not isinstance(ds, xr.Dataset):
        if not ds:
            raise PlotError(f"{figure_name}: the dict of results is empty")
        parts = []
        for name, d in ds.items():
            require(d, figure_name, "slice", ("loss",), dims=dims)
            d = d.drop_vars("run") if "run" in d.coords and "run" not in d.dims else d
            parts.append(with_run_step(d, run=str(name)).assign_coords(run=[str(name)]))
        # Outer join over alpha: runs with other grids keep their own points (NaN elsewhere).
        ds = xr.concat(parts, dim="run", join="outer", combine_attrs="drop_conflicts",
                       data_vars="all", coords="different", compat="equals")
    require(ds, figure_name, "slice", ("loss",), dims=dims)
    return with_run_step(ds)


def _ndim(ds: xr.Dataset) -> int:
    if "ndim" in ds.attrs:
        return int(ds.attrs["ndim"])
    return 2 if "beta" in ds["loss"].dims else 1


def _kind(ds: xr.Dataset) -> str:
    return str(ds.attrs.get("direction_kind", "given"))


def _at(ds: xr.Dataset, run: str, step: int) -> xr.Dataset:
    """One (run, step) of the slice, without the grid rows/columns it does not have (a folder
    combined over runs with different grids holds NaN there)."""
    d = ds.sel(run=run, step=step)
    loss = d["loss"]
    for dim in ("alpha", "beta"):
        if dim in loss.dims:
            other = [x for x in loss.dims if x != dim]
            finite = np.isfinite(loss.transpose(dim, *other).values.astype(float))
            d = d.isel({dim: np.flatnonzero(finite.reshape(loss.sizes[dim], -1).any(1))})
            loss = d["loss"]
    if d["loss"].size == 0:
        raise PlotError(f"the slice of run {run!r} at step {step} holds no finite loss")
    return d


def _chosen(ds: xr.Dataset, step: int | None, run: str | Sequence[str] | None) -> dict[str, int]:
    chosen = select_steps(ds["loss"], step)
    if run is not None:
        wanted = [run] if isinstance(run, str) else list(run)
        missing = [r for r in wanted if r not in chosen]
        if missing:
            raise PlotError(f"run(s) {', '.join(map(repr, missing))} have no slice"
                            + ("" if step is None else f" at step {step}") + f"; runs: {sorted(chosen)}")
        chosen = {r: chosen[r] for r in wanted}
    return chosen


def slice_grid(d: xr.Dataset, metric: str = "loss") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(alpha, beta, Z)`` of a 2-D slice with ``Z[j, i]`` the value at ``(alpha[i], beta[j])``:
    the (rows = y, columns = x) layout matplotlib's ``contourf(alpha, beta, Z)`` expects, for any
    grid shape (a non-square grid keeps its orientation). Infinite values become NaN.

    Example:
        >>> d = xr.Dataset({"loss": (("alpha", "beta"), [[0.0, 1.0, 2.0], [10.0, 11.0, 12.0]])},
        ...                coords={"alpha": [0.0, 1.0], "beta": [0.0, 1.0, 2.0]})
        >>> a, b, z = slice_grid(d)
        >>> z.shape, float(z[2, 1])   # beta = 2 (row), alpha = 1 (column)
        ((3, 2), 12.0)
    """
    da = d[metric]
    if set(da.dims) != {"alpha", "beta"}:
        raise PlotError(f"{metric!r} has dims {da.dims}; a 2-D slice has ('alpha', 'beta')")
    z = da.transpose("beta", "alpha").values.astype(float)
    z = np.where(np.isfinite(z), z, np.nan)
    return d["alpha"].values.astype(float), d["beta"].values.astype(float), z


def _points(d: xr.Dataset) -> list[tuple[str, int, float, float]]:
    """The checkpoints marked on the slice: ``(label, step, alpha, beta)`` (beta NaN in 1-D),
    in step order when every step is known, else in stored order."""
    if "point_alpha" not in d.variables:
        return []
    a = np.atleast_1d(d["point_alpha"].values.astype(float))
    b = np.atleast_1d(d["point_beta"].values.astype(float)) if "point_beta" in d.variables else np.full_like(a, np.nan)
    labels = (np.atleast_1d(d["point_label"].values) if "point_label" in d.variables
              else np.array([f"point {i}" for i in range(a.size)]))
    steps = np.atleast_1d(d["point_step"].values) if "point_step" in d.variables else np.full(a.size, -1)
    out = []
    for lab, s, x, y in zip(labels, steps, a, b):
        lab = lab.decode() if isinstance(lab, bytes) else str(lab)
        if not np.isfinite(x) or lab == "":
            continue  # a point this run does not have (combined folders pad with NaN / "")
        out.append((lab, int(s) if np.isfinite(float(s)) else -1, float(x), float(y)))
    if out and all(p[1] >= 0 for p in out):
        out.sort(key=lambda p: p[1])
    return out


def _norms(d: xr.Dataset) -> list[float]:
    if "direction_norm" not in d.variables:
        return []
    return [float(v) for v in np.atleast_1d(d["direction_norm"].values.astype(float))]


def _variance(d: xr.Dataset) -> list[float]:
    if "explained_variance" not in d.variables:
        return []
    return [float(v) for v in np.atleast_1d(d["explained_variance"].values.astype(float))]


def _axis_text(d: xr.Dataset, axis: int, kind: str) -> str:
    """``alpha (||d1|| = 12.3)``; PCA axes with their explained variance, interpolation with its
    ends: what a reader needs to know what one unit of the axis is."""
    sym = (r"$\alpha$", r"$\beta$")[axis]
    norms, var = _norms(d), _variance(d)
    norm = norms[axis] if axis < len(norms) and math.isfinite(norms[axis]) else None
    n_text = rf"$\|d_{axis + 1}\|$ = {norm:.3g}" if norm is not None else ""
    if kind == "trajectory":
        v = var[axis] if axis < len(var) and math.isfinite(var[axis]) else None
        parts = [f"{v * 100:.1f} % of variance" if v is not None else "", n_text]
        return f"PC {axis + 1} {sym} (" + ", ".join(p for p in parts if p) + ")"
    if kind == "interpolation":
        ends = [p[0] for p in _points(d)]
        what = f"0 = {ends[0]}, 1 = {ends[1]}" if len(ends) >= 2 else "0 = first, 1 = second checkpoint"
        return f"{sym} ({what}" + (rf", $\|B - A\|$ = {norm:.3g})" if norm is not None else ")")
    if kind == "plane":
        ends = [p[0] for p in _points(d)]
        what = f"{ends[axis + 1]} - {ends[0]}" if len(ends) >= 3 else f"checkpoint {axis + 2} - centre"
        return f"{sym} (d{axis + 1} = {what}" + (f", {n_text})" if n_text else ")")
    return f"{sym} (direction d{axis + 1}" + (f", {n_text})" if n_text else ")")


def _value_label(ds: xr.Dataset, metric: str) -> str:
    attrs = dict(ds[metric].attrs)
    if metric == "loss":
        attrs.setdefault("units", ds.attrs.get("loss_units", "1"))
        attrs["long_name"] = "loss"  # the long_name of the analysis is a sentence; axes want a word
    elif metric == "accuracy":
        attrs["long_name"] = "accuracy"
    return axis_label(attrs, metric)


def _what(ds: xr.Dataset) -> str:
    """``"random directions, filter-normalized, BN eval"``."""
    kind = _kind(ds)
    parts = [_KIND.get(kind, kind)]
    if kind in ("random", "momentum", "gradient", "eigenvector", "given"):
        norm = str(ds.attrs.get("normalization", ""))
        if norm in _NORMALIZATION:
            parts.append(_NORMALIZATION[norm])
    if ds.attrs.get("bn_mode"):
        parts.append(f"BN {ds.attrs['bn_mode']}")
    return ", ".join(parts)


def _panel_title(run: str, step: int, many: bool) -> str:
    return f"{run}, step {step}" if many else f"step {step}"


# --------------------------------------------------------------------------------------------
# 2-D


def _levels(z: np.ndarray, levels: int | Sequence[float], log: bool, vmax: float | None) -> np.ndarray:
    if not isinstance(levels, (int, np.integer)):
        lv = np.asarray(levels, dtype=float)
        if lv.ndim != 1 or lv.size < 2 or not np.all(np.diff(lv) > 0):
            raise PlotError(f"levels must be an int or an increasing sequence of >= 2 values, got {levels!r}")
        return lv
    if int(levels) < 2:
        raise PlotError(f"levels must be >= 2, got {levels}")
    finite = z[np.isfinite(z)]
    lo, hi = float(finite.min()), float(finite.max())
    if vmax is not None:
        hi = min(hi, float(vmax))
    if log:
        pos = finite[finite > 0]
        if pos.size == 0:
            raise PlotError("log=True needs positive loss values; this slice has none")
        lo = float(pos.min())
        hi = max(hi, lo * 1.0001)
        return np.geomspace(lo, hi, int(levels))
    if hi <= lo:
        hi = lo + (abs(lo) * 1e-6 or 1e-6)
    return np.linspace(lo, hi, int(levels))


def _contour(ax, d: xr.Dataset, *, metric: str, levels, log: bool, vmax: float | None, cmap: str,
             label_levels: bool = True):
    from matplotlib import colors as mcolors

    a, b, z = slice_grid(d, metric)
    if not np.isfinite(z).any():
        raise PlotError(f"the slice holds no finite {metric!r}")
    lv = _levels(z, levels, log, vmax)
    norm = mcolors.LogNorm(vmin=lv[0], vmax=lv[-1]) if log else None
    # Values beyond the top level (a divergent rim) are drawn in the top colour, not left blank.
    zc = np.where(np.isfinite(z), np.clip(z, lv[0] if log else -np.inf, None), np.nan)
    cf = ax.contourf(a, b, zc, levels=lv, cmap=cmap, norm=norm, extend="max")
    cs = ax.contour(a, b, zc, levels=lv, colors="black", linewidths=0.4, alpha=0.7)
    if label_levels and len(cs.levels):
        step = max(1, len(cs.levels) // 6)
        ax.clabel(cs, cs.levels[::step], inline=True, fontsize=6, fmt="%.3g")
    return cf


def _mark(ax, d: xr.Dataset, *, centre_label: str = "centre", path: bool = False, color: Any = "black") -> None:
    """The centre (0, 0) as a star; the ``point_*`` checkpoints as labelled dots (joined by
    arrows in step order when ``path``)."""
    pts = _points(d)
    on_centre = any(abs(p[2]) < 1e-12 and abs(p[3]) < 1e-12 for p in pts)
    if not on_centre:
        ax.scatter([0.0], [0.0], label=centre_label, **_CENTRE)
    if not pts:
        return
    xs, ys = np.array([p[2] for p in pts]), np.array([p[3] for p in pts])
    if path and len(pts) > 1:
        ax.plot(xs, ys, color=color, linewidth=1.0, zorder=4)
        for i in range(len(pts) - 1):
            ax.annotate("", xy=(xs[i + 1], ys[i + 1]), xytext=(xs[i], ys[i]), zorder=4,
                        arrowprops=dict(arrowstyle="-|>", color=color, lw=0.8, shrinkA=2, shrinkB=2))
    ax.scatter(xs, ys, color=color, edgecolors="white", linewidths=0.5, s=22, zorder=6,
               label="checkpoints" if not path else "trajectory (step order)")
    if on_centre:  # the centre checkpoint itself is a point: star it
        ax.scatter([0.0], [0.0], **_CENTRE)
    for i, (lab, s, x, y) in enumerate(pts):
        if len(pts) > 4 and i not in (0, len(pts) - 1):
            continue  # a long trajectory: its first and last checkpoints only, never a pile of labels
        text = lab if s < 0 or lab == str(s) else f"{lab} (step {s})"
        ax.annotate(text, (x, y), xytext=(4, 4), textcoords="offset points", fontsize=6, zorder=7,
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.7))


def _panels(n: int, width: float = 2.9, height: float = 2.6, projection: str | None = None):
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig = figure(max(COLUMN, width * ncols + 0.3), height * nrows + 0.3)
    axes = [fig.add_subplot(nrows, ncols, i + 1, projection=projection) for i in range(n)]
    return fig, axes


def slice_contour(
    ds: xr.Dataset,
    *,
    step: int | None = None,
    run: str | Sequence[str] | None = None,
    metric: str = "loss",
    log: bool = False,
    levels: int | Sequence[float] = 15,
    vmax: float | None = None,
    cmap: str = "viridis",
    colors: Mapping[str, Any] | None = None,
) -> Figure:
    """A 2-D slice as filled contours with labelled levels; centre and checkpoints marked.

    Args:
        ds: a 2-D slice result (dims alpha, beta): one file, a folder combined over
            (run, step), or the direct output of ``loss_slice``.
        step: training step shown; ``None`` = each run's last step.
        run: the run(s) shown (default all; one panel each).
        metric: ``"loss"`` or ``"accuracy"``.
        log: logarithmically spaced levels (and color scale).
        levels: number of levels, or the levels themselves.
        vmax: top level (higher values get the top color), e.g. a few times the centre loss.
        cmap: matplotlib colormap name.
        colors: run -> color (titles keep the run's color of the other figures).

    Returns:
        The Figure: one contour panel per run, axes labelled with the directions (and their
        norms), a colorbar labelled with the metric and its units.

    Raises:
        PlotError: not a 2-D slice result, or no data at ``step``.

    Example:
        >>> fig = slice_contour(read_result("results/sgd/epoch_0010/slice-0123456789.nc"))  # doctest: +SKIP
    """
    ds = _as_dataset(ds, "slice_contour", ("alpha", "beta"))
    if metric not in ds.variables:
        raise PlotError(f"slice_contour: the result has no {metric!r}; it has {', '.join(map(str, ds.data_vars))}")
    chosen = _chosen(ds, step, run)
    colors = run_colors(runs_of(ds), colors)
    kind = _kind(ds)
    with style():
        fig, axes = _panels(len(chosen))
        for ax, (r, s) in zip(axes, chosen.items()):
            d = _at(ds, r, s)
            cf = _contour(ax, d, metric=metric, levels=levels, log=log, vmax=vmax, cmap=cmap)
            _mark(ax, d)
            ax.set_xlabel(_axis_text(d, 0, kind))
            ax.set_ylabel(_axis_text(d, 1, kind))
            ax.set_title(_panel_title(r, s, len(chosen) > 1 or r != "model"), color=colors[r])
            ax.grid(False)
            cb = fig.colorbar(cf, ax=ax, shrink=0.9, format=_TICKS)
            cb.set_label(_value_label(ds, metric) + (", log scale" if log else ""))
            ax.legend(loc="best", fontsize=6, framealpha=0.6, frameon=True)
        fig.suptitle(_what(ds), fontsize=9)
    return fig


def slice_surface(
    ds: xr.Dataset,
    *,
    step: int | None = None,
    run: str | Sequence[str] | None = None,
    metric: str = "loss",
    log: bool = False,
    vmax: float | None = None,
    cmap: str = "viridis",
    colors: Mapping[str, Any] | None = None,
) -> Figure:
    """A 2-D slice as a 3-D surface (SAM Fig. 1), one panel per run.

    With ``log`` the height is ``log10`` of the value and the z ticks show the values; ``vmax``
    cuts the surface there (a divergent rim otherwise flattens the basin).

    Returns:
        The Figure: alpha / beta axes labelled with the directions, z with the metric and units.
    """
    from matplotlib import ticker

    ds = _as_dataset(ds, "slice_surface", ("alpha", "beta"))
    if metric not in ds.variables:
        raise PlotError(f"slice_surface: the result has no {metric!r}; it has {', '.join(map(str, ds.data_vars))}")
    chosen = _chosen(ds, step, run)
    colors = run_colors(runs_of(ds), colors)
    kind = _kind(ds)
    with style():
        fig, axes = _panels(len(chosen), width=3.2, height=3.0, projection="3d")
        for ax, (r, s) in zip(axes, chosen.items()):
            d = _at(ds, r, s)
            a, b, z = slice_grid(d, metric)
            if vmax is not None:
                z = np.minimum(z, float(vmax))
            if log:
                if not (z[np.isfinite(z)] > 0).all():
                    raise PlotError("slice_surface: log=True needs positive values everywhere")
                z = np.log10(z)
            A, B = np.meshgrid(a, b)  # (len(beta), len(alpha)), like z
            ax.plot_surface(A, B, np.ma.masked_invalid(z), cmap=cmap, linewidth=0, antialiased=True,
                            rcount=min(100, z.shape[0]), ccount=min(100, z.shape[1]))
            c = float(d[metric].sel(alpha=0.0, beta=0.0, method="nearest"))
            if math.isfinite(c) and (not log or c > 0):
                ax.scatter([0.0], [0.0], [math.log10(c) if log else c], marker="*", s=60, color="red",
                           depthshade=False, zorder=10)
            # 3-D axes have little room: the symbol on one line, what it means on the next
            ax.set_xlabel(_axis_text(d, 0, kind).replace(" (", "\n(", 1), fontsize=6, labelpad=2)
            ax.set_ylabel(_axis_text(d, 1, kind).replace(" (", "\n(", 1), fontsize=6, labelpad=2)
            ax.set_zlabel(_value_label(ds, metric), fontsize=6, labelpad=2)
            ax.set_box_aspect(None, zoom=0.82)
            for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
                axis.set_major_locator(ticker.MaxNLocator(5))
            if log:
                ax.zaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{10 ** v:.3g}"))
            ax.set_title(_panel_title(r, s, len(chosen) > 1 or r != "model"), color=colors[r])
            ax.tick_params(labelsize=6)
        fig.suptitle(_what(ds), fontsize=9)
    return fig


def trajectory_plane(
    ds: xr.Dataset,
    *,
    step: int | None = None,
    run: str | Sequence[str] | None = None,
    log: bool = False,
    levels: int | Sequence[float] = 15,
    vmax: float | None = None,
    cmap: str = "viridis",
    colors: Mapping[str, Any] | None = None,
) -> Figure:
    """A training trajectory on its PCA plane (Li et al. Section 7): the loss contours of the
    plane with the run's checkpoints in step order, joined by arrows, the first and the last
    labelled with their steps; axes say how much of the trajectory's variance each PC holds.

    Raises:
        PlotError: not a 2-D slice result, or one without ``point_alpha`` / ``point_beta``.
    """
    ds = _as_dataset(ds, "trajectory_plane", ("alpha", "beta"))
    require(ds, "trajectory_plane", "slice", ("loss", "point_alpha", "point_beta"))
    chosen = _chosen(ds, step, run)
    colors = run_colors(runs_of(ds), colors)
    with style():
        fig, axes = _panels(len(chosen))
        for ax, (r, s) in zip(axes, chosen.items()):
            d = _at(ds, r, s)
            cf = _contour(ax, d, metric="loss", levels=levels, log=log, vmax=vmax, cmap=cmap, label_levels=True)
            _mark(ax, d, centre_label="centre (PCA origin)", path=True, color="#D55E00")
            ax.set_xlabel(_axis_text(d, 0, "trajectory"))
            ax.set_ylabel(_axis_text(d, 1, "trajectory"))
            ax.set_title(_panel_title(r, s, len(chosen) > 1 or r != "model"), color=colors[r])
            ax.grid(False)
            cb = fig.colorbar(cf, ax=ax, shrink=0.9, format=_TICKS)
            cb.set_label(_value_label(ds, "loss") + (", log scale" if log else ""))
            ax.legend(loc="best", fontsize=6, framealpha=0.6, frameon=True)
        fig.suptitle(_what(ds), fontsize=9)
    return fig


# --------------------------------------------------------------------------------------------
# 1-D


def _legend_norm(d: xr.Dataset) -> str:
    n = _norms(d)
    return rf" ($\|d\|$ = {n[0]:.3g})" if n and math.isfinite(n[0]) else ""


def slice_curves(
    ds: xr.Dataset | Mapping[str, xr.Dataset],
    *,
    step: int | None = None,
    run: str | Sequence[str] | None = None,
    metrics: Sequence[str] = ("loss", "accuracy"),
    log: bool = False,
    colors: Mapping[str, Any] | None = None,
) -> Figure:
    """1-D slices of several runs overlaid (one color per run), a panel per metric present.

    Args:
        ds: a 1-D slice result (dim alpha): combined over runs by
            :func:`landscape.results.open_results`, or a dict ``run name -> Dataset``.
        step: training step shown; ``None`` = each run's last.
        run: the run(s) shown (default all).
        metrics: the panels, among those the result holds (accuracy only for class targets).
        log: log y axis for the loss.
        colors: run -> color.

    Returns:
        The Figure: one line per run and panel, labelled with the run (and the direction norm);
        the centre of each run marked.

    Example:
        >>> fig = slice_curves({"sgd": read_result(a), "sam": read_result(b)})  # doctest: +SKIP
    """
    ds = _as_dataset(ds, "slice_curves", ("alpha",))
    shown = [m for m in metrics if m in ds.variables]
    if not shown:
        raise PlotError(f"slice_curves: none of {list(metrics)} in the result")
    chosen = _chosen(ds, step, run)
    colors = run_colors(runs_of(ds), colors)
    kind = _kind(ds)
    with style():
        fig = figure(COLUMN if len(shown) == 1 else 2.9 * len(shown) + 0.3, 2.6)
        axes = fig.subplots(1, len(shown), squeeze=False).ravel()
        for ax, m in zip(axes, shown):
            for r, s in chosen.items():
                d = _at(ds, r, s)
                y = d[m].values.astype(float)
                a = d["alpha"].values.astype(float)
                ok = np.isfinite(y)
                ax.plot(a[ok], y[ok], color=colors[r], label=f"{r}{_legend_norm(d)}")
                if 0.0 in a:
                    ax.plot([0.0], [float(d[m].sel(alpha=0.0))], marker="o", color=colors[r],
                            markeredgecolor="black", zorder=5, label="_nolegend_")
                for lab, _, x, _ in _points(d):
                    ax.axvline(x, color=colors[r], linestyle=":", linewidth=0.8)
                    ax.annotate(lab, (x, 1.0), xycoords=("data", "axes fraction"), fontsize=6,
                                ha="center", va="bottom", color=colors[r])
            if log and m == "loss":
                log_axis(ax, "y")
            ax.set_xlabel(_axis_text(_at(ds, *next(iter(chosen.items()))), 0, kind)
                          if len(chosen) == 1 else r"$\alpha$ (direction d1, norms in the legend)")
            ax.set_ylabel(_value_label(ds, m))
        axes[0].legend(title="run", fontsize=7)
        axes[0].set_title(", ".join(t for t in (_what(ds), step_note(chosen)) if t), loc="left")
    return fig


def interpolation_curves(
    ds: xr.Dataset | Mapping[str, xr.Dataset],
    *,
    step: int | None = None,
    run: str | Sequence[str] | None = None,
    log: bool = False,
    colors: Mapping[str, Any] | None = None,
) -> Figure:
    """Loss (left axis, solid) and accuracy (right axis, dashed) along the line between two
    checkpoints, ``theta(alpha) = A + alpha (B - A)``; the ends (alpha = 0, 1) marked by their
    labels. Several runs (or pairs) are overlaid, one color each.

    Returns:
        The Figure: x labelled with the two ends and ``||B - A||``, the left y with the loss and
        its units, the right y (when the result has accuracy) with the accuracy.
    """
    ds = _as_dataset(ds, "interpolation_curves", ("alpha",))
    chosen = _chosen(ds, step, run)
    colors = run_colors(runs_of(ds), colors)
    has_acc = "accuracy" in ds.variables
    with style():
        fig = figure(COLUMN + 0.6, 2.6)
        ax = fig.add_subplot()
        ax2 = ax.twinx() if has_acc else None
        if ax2 is not None:
            ax2.grid(False)
            ax2.spines["right"].set_visible(True)
        ends: dict[float, list[str]] = {}  # alpha -> the labels of the checkpoints there (all runs)
        many = len(chosen) > 1
        for r, s in chosen.items():
            d = _at(ds, r, s)
            a = d["alpha"].values.astype(float)
            y = d["loss"].values.astype(float)
            ok = np.isfinite(y)
            ax.plot(a[ok], y[ok], color=colors[r], label=f"{r}{_legend_norm(d)} loss" if many else "loss")
            if ax2 is not None:
                acc = d["accuracy"].values.astype(float)
                ok = np.isfinite(acc)
                ax2.plot(a[ok], acc[ok], color=colors[r], linestyle="--",
                         label=f"{r} accuracy" if len(chosen) > 1 else "accuracy")
            for lab, _, x, _ in _points(d):
                labs = ends.setdefault(round(x, 9), [])
                if lab not in labs:
                    labs.append(lab)
        for x, labs in ends.items():
            ax.axvline(x, color="grey", linestyle=":", linewidth=0.8)
            ax.annotate(" / ".join(labs), (x, 1.0), xycoords=("data", "axes fraction"), fontsize=6,
                        ha="center", va="bottom")
        if log:
            log_axis(ax, "y")
        first = _at(ds, *next(iter(chosen.items())))
        ax.set_xlabel(r"$\alpha$ (0 = A, 1 = B of each run; $\|B - A\|$ in the legend)" if many
                      else _axis_text(first, 0, "interpolation"))
        ax.set_ylabel(_value_label(ds, "loss") + " (solid)")
        handles, labels = ax.get_legend_handles_labels()
        if ax2 is not None:
            ax2.set_ylabel(_value_label(ds, "accuracy") + " (dashed)")
            h2, l2 = ax2.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        ax.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncols=2)
        ax.set_title(", ".join(t for t in ("linear interpolation", step_note(chosen),
                                          f"BN {ds.attrs['bn_mode']}" if ds.attrs.get("bn_mode") else "") if t),
                     pad=10)
    return fig


# --------------------------------------------------------------------------------------------
# Which figures a result calls for


def slice_figures(ds: xr.Dataset) -> dict[str, Callable[..., Figure]]:
    """The figures a slice result calls for, by file stem, from its ``ndim`` and
    ``direction_kind``: 1-D -> ``slice_1d`` (curves) or ``slice_interpolation``; 2-D ->
    ``slice_contour`` and ``slice_surface``, and for a trajectory ``slice_trajectory``.

    Example:
        >>> d = xr.Dataset({"loss": ("alpha", [1.0, 0.5])}, coords={"alpha": [0.0, 1.0]},
        ...                attrs={"analysis": "slice", "ndim": 1, "direction_kind": "interpolation"})
        >>> list(slice_figures(d))
        ['slice_interpolation']
    """
    require(ds, "slice_figures", "slice", ("loss",))
    kind = _kind(ds)
    if _ndim(ds) == 1:
        return {"slice_interpolation": interpolation_curves} if kind == "interpolation" else {"slice_1d": slice_curves}
    if kind == "trajectory":
        return {"slice_trajectory": trajectory_plane, "slice_surface": slice_surface}
    return {"slice_contour": slice_contour, "slice_surface": slice_surface}
