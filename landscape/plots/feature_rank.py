"""Feature-rank figures from :func:`landscape.analyses.feature_rank.feature_rank` results.

Andriushchenko et al. (2023, "Sharpness-aware minimization leads to low-rank features", arXiv
2305.16292) compare the feature rank of SGD and SAM block by block; SAM-ON (Table 6) and MSAM
(Appendix A.5) report it per optimizer. These figures show it as a grouped bar chart per layer
and run at one checkpoint, and as curves over training steps, one panel per layer. A rank capped
by the number of examples (``n <= d``) is drawn hatched (bars) or as an open marker (curves).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from landscape.plots.common import (
    COLUMN,
    PlotError,
    axis_label,
    figure,
    integer_axis,
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

__all__ = ["feature_rank_bars", "feature_rank_vs_step"]

_YLABEL = "feature rank"
_CAPPED = "open markers: rank capped by n (n <= d)"



def _what(ds: xr.Dataset) -> str:
    """``"sample-centred, 99 % of sum s^2, n = 10240"`` from the options and the sample count."""
    opts = options(ds)
    centering = ds.attrs.get("centering", opts.get("centering"))
    threshold = ds.attrs.get("threshold", opts.get("threshold"))
    parts = []
    if centering:
        parts.append({"none": "uncentred"}.get(str(centering), f"{centering}-centred"))
    if threshold is not None:
        parts.append(rf"{100 * float(threshold):g} % of $\sum s^2$")
    if "n_samples" in ds:
        n = np.unique(ds["n_samples"].values[np.isfinite(ds["n_samples"].values.astype(float))])
        if n.size == 1:
            parts.append(f"n = {int(n[0])}")
    return ", ".join(parts)


def _pick_layers(ds: xr.Dataset, layers: Sequence[str] | None) -> list[str]:
    stored = [str(v) for v in ds["layer"].values]
    if layers is None:
        return stored
    wanted = [layers] if isinstance(layers, str) else list(layers)
    missing = [w for w in wanted if w not in stored]
    if missing:
        raise PlotError(f"layer(s) {missing} are not in the feature_rank result; stored layers: {stored}")
    return wanted


def _capped(ds: xr.Dataset) -> xr.DataArray | None:
    return ds["capped_by_n"] if "capped_by_n" in ds else None


def feature_rank_bars(
    ds: xr.Dataset,
    *,
    step: int | None = None,
    layers: Sequence[str] | None = None,
    colors: Mapping[str, Any] | None = None,
    ax=None,
) -> Figure:
    """Feature rank per layer (groups) and run (bars) at one checkpoint.

    Args:
        ds: a feature_rank result: one file, a folder combined by
            :func:`landscape.results.open_results` (dims run, step, layer, component) or the
            direct output of :func:`landscape.analyses.feature_rank.feature_rank`.
        step: training step shown; ``None`` = each run's last step with data.
        layers: the layers shown, in this order (stored names); ``None`` = all.
        colors: run -> color (default: :func:`~landscape.plots.common.run_colors`).
        ax: draw into this Axes instead of a new figure.

    Returns:
        The Figure: one group of bars per layer, one bar per run (labelled with the run name);
        ranks capped by ``n`` are hatched.

    Raises:
        PlotError: not a feature_rank result, an unknown layer, or no run has data at ``step``.

    Example:
        >>> fig = feature_rank_bars(open_results("results", "feature_rank"))  # doctest: +SKIP
    """
    require(ds, "feature_rank_bars", "feature_rank", ("rank",), dims=("layer",))
    ds = with_run_step(ds)
    names = _pick_layers(ds, layers)
    chosen = select_steps(ds["rank"], step)
    colors = run_colors(runs_of(ds), colors)
    capped = _capped(ds)
    width = 0.8 / max(len(chosen), 1)
    x = np.arange(len(names))
    any_capped = False
    with style():
        own = ax is None
        if own:
            fig = figure(max(COLUMN, 1.6 + 0.45 * len(names) * max(len(chosen), 1) ** 0.5), 2.6)
            ax = fig.add_subplot()
        else:
            fig = ax.figure
        for i, (run, s) in enumerate(chosen.items()):
            ranks = ds["rank"].sel(run=run, step=s, layer=names).values.astype(float)
            flags = (capped.sel(run=run, step=s, layer=names).values.astype(float) > 0
                     if capped is not None else np.zeros(len(names), bool))
            any_capped |= bool(flags.any())
            bars = ax.bar(x - 0.4 + width * (i + 0.5), np.where(np.isfinite(ranks), ranks, 0.0), width,
                          color=colors[run], label=run, edgecolor="white", linewidth=0.5)
            for bar, flag in zip(bars, flags):
                if flag:
                    bar.set_hatch("///")
        ax.set_xticks(x, names, rotation=30 if len(names) > 4 or max(map(len, names)) > 8 else 0,
                      ha="right" if len(names) > 4 or max(map(len, names)) > 8 else "center")
        ax.set_xlabel(axis_label(ds["layer"], "layer"))
        ax.set_ylabel(_YLABEL)
        integer_axis(ax, "y")
        ax.grid(axis="x", visible=False)
        ax.set_title("\n".join(t for t in (_what(ds), step_note(chosen)) if t))
        # plain patches: a run's first bar may be hatched, and the legend would copy it
        handles = [Patch(facecolor=colors[run]) for run in chosen]
        labels = list(chosen)
        if any_capped:
            handles.append(Patch(facecolor="white", edgecolor="0.3", hatch="///"))
            labels.append("capped by n\n(n <= d)")
        if own:
            fig.legend(handles, labels, title="run", loc="outside right upper")
        else:
            ax.legend(handles, labels, title="run")
    return fig


def feature_rank_vs_step(
    ds: xr.Dataset,
    *,
    layers: Sequence[str] | None = None,
    colors: Mapping[str, Any] | None = None,
) -> Figure:
    """Feature rank against training steps: one panel per layer, one line per run.

    Args:
        ds: a feature_rank result over (run, step) (see :func:`feature_rank_bars`).
        layers: the layers shown (stored names); ``None`` = all.
        colors: run -> color.

    Returns:
        The Figure: one axes per layer (titled with it), one line per run labelled with the run
        name; checkpoints whose rank is capped by ``n`` have open markers.

    Raises:
        PlotError: not a feature_rank result, or an unknown layer.
    """
    require(ds, "feature_rank_vs_step", "feature_rank", ("rank",), dims=("layer",))
    ds = with_run_step(ds)
    names = _pick_layers(ds, layers)
    colors = run_colors(runs_of(ds), colors)
    capped = _capped(ds)
    any_capped = False
    with style():
        fig, axes = panel_grid(len(names))
        for ax, layer in zip(axes, names):
            for run in runs_of(ds):
                d = ds.sel(run=run, layer=layer)
                steps, ranks = d["step"].values, d["rank"].values.astype(float)
                ok = np.isfinite(ranks)
                if not ok.any():
                    continue
                ax.plot(steps[ok], ranks[ok], color=colors[run], marker="o", label=run)
                if capped is not None:
                    flags = ok & (d["capped_by_n"].values.astype(float) > 0)
                    if flags.any():
                        any_capped = True
                        ax.plot(steps[flags], ranks[flags], linestyle="none", marker="o", markerfacecolor="white",
                                markeredgecolor=colors[run])
            ax.set_title(layer)
            ax.set_xlabel(axis_label(ds["step"], "training step"))
            integer_axis(ax)
            integer_axis(ax, "y")
        for ax in axes:
            if ax.get_subplotspec().is_first_col():
                ax.set_ylabel(_YLABEL)
        what = ", ".join(t for t in (_what(ds), _CAPPED if any_capped else "") if t)
        if len(names) == 1:
            axes[0].legend(title="run")
        else:
            handles, labels = axes[0].get_legend_handles_labels()
            fig.legend(handles, labels, loc="outside right upper", title="run")
        if what:
            fig.suptitle(what, fontsize=9)
    return fig
