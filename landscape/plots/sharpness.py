"""m-sharpness figures from :func:`landscape.analyses.sharpness.sharpness` results.

SAM-ON (Section 5.2, Tables 6, 18, 19) compares the adaptive worst-case m-sharpness of
Andriushchenko et al. (2023) across training methods at a few radii; these figures show the same
numbers as curves: sharpness against the radius at one checkpoint, and against training steps.
Error bars are the standard error of the mean over the ``n / m`` batches (``sharpness_sem``).
"""

from __future__ import annotations

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

__all__ = ["sharpness_vs_accuracy", "sharpness_vs_rho", "sharpness_vs_step"]

_KIND = {"worst": "worst-case", "average": "average-case", "one-step": "one-step"}


def _ylabel(ds: xr.Dataset) -> str:
    return axis_label({"units": ds["sharpness_mean"].attrs.get("units", "nats")}, "m-sharpness")


def _what(ds: xr.Dataset) -> str:
    """``"adaptive l-inf worst-case, m = 128"`` (+ the perturbed group when it is not all parameters)."""
    kind = ds.attrs.get("kind")
    norm = {"linf": r"$\ell_\infty$", "l2": r"$\ell_2$"}.get(str(ds.attrs.get("norm", "")), "") if kind != "average" else ""
    adaptive = "adaptive" if bool(int(ds.attrs.get("adaptive", 0))) else ""
    parts = [" ".join(t for t in (adaptive, norm, _KIND.get(str(kind), str(kind))) if t)] if kind else []
    m = ds.attrs.get("batch_size")
    if m:
        parts.append(f"m = {int(m)}")
    params = options(ds).get("params")
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


def test_accuracy_at(history: xr.Dataset, step: int, epoch: int | None = None) -> float:
    """Test accuracy (0-1) of a :func:`~landscape.plots.training.history_dataset` at the epoch that
    ended at ``step`` (else at ``epoch``, the checkpoint's epoch); NaN when the history has neither.

    Example:
        >>> from landscape.plots.training import history_dataset
        >>> h = history_dataset({"history": [{"epoch": 1, "step": 10, "test_acc": 0.5},
        ...                                  {"epoch": 2, "step": 20, "test_acc": 0.75}]})
        >>> test_accuracy_at(h, 20), test_accuracy_at(h, 15, epoch=1), test_accuracy_at(h, 15)
        (0.75, 0.5, nan)
    """
    if "test_acc" not in history:
        return float("nan")
    acc = history["test_acc"].values.astype(float)
    if "step" in history:
        at = np.flatnonzero(history["step"].values.astype(float) == float(step))
        if at.size:
            return float(acc[at[-1]])
    epochs = history["epoch"].values
    if epoch is not None and int(epoch) in epochs:
        return float(acc[list(epochs).index(int(epoch))])
    return float("nan")


def sharpness_vs_accuracy(
    ds: xr.Dataset,
    histories: xr.Dataset | Mapping[str, xr.Dataset] | Sequence[xr.Dataset],
    *,
    rho: float | Sequence[float] | None = None,
    step: int | None = None,
    colors: Mapping[str, Any] | None = None,
) -> Figure:
    """Test accuracy against m-sharpness, one labelled point per run (SAM-ON Table 6 as a figure).

    SAM-ON (Section 5.2, Table 6) finds SAM-ON *sharper* than SAM in adaptive worst-case
    m-sharpness yet as accurate or better: sharpness does not order the runs by generalization.
    Here each run is one point at one checkpoint: x the mean m-sharpness (with its standard
    error), y the test accuracy the trainer recorded for the epoch that ended at that step.

    Args:
        ds: a sharpness result over (run, step) (see :func:`sharpness_vs_rho`).
        histories: the runs' training histories: a mapping run -> :func:`~landscape.plots.training.history_dataset`,
            a list of them (named by their ``run`` attribute) or a
            :func:`~landscape.plots.training.combine_histories` Dataset over (run, epoch).
        rho: the radius or radii shown, one panel each (stored values); ``None`` = all.
        step: training step shown; ``None`` = each run's last step with data (the final checkpoint).
        colors: run -> color.

    Returns:
        The Figure: one axes per radius (titled with it), one point per run with a horizontal
        standard-error bar, labelled with the run name (legend and text next to the point).
        Runs without a recorded test accuracy at their step are left out and named in the title.

    Raises:
        PlotError: not a sharpness result, an unknown radius, or no run has both a sharpness and
            a test accuracy at the chosen step.

    Example:
        >>> fig = sharpness_vs_accuracy(open_results("results", "sharpness"), histories)  # doctest: +SKIP
    """
    from landscape.plots.training import combine_histories

    require(ds, "sharpness_vs_accuracy", "sharpness", ("sharpness_mean", "sharpness_sem"), dims=("rho",))
    ds = with_run_step(ds)
    rhos = _pick_rhos(ds, rho)
    hist = histories if isinstance(histories, xr.Dataset) and "run" in histories.dims else combine_histories(
        [histories] if isinstance(histories, xr.Dataset) else histories)
    have = {str(r) for r in hist["run"].values}
    chosen = select_steps(ds["sharpness_mean"], step)
    acc: dict[str, float] = {}
    for run, s in chosen.items():
        epoch = int(ds["epoch"].sel(run=run, step=s)) if "epoch" in ds.coords and ds["epoch"].dims == ("run", "step") else None
        a = test_accuracy_at(hist.sel(run=run), s, None if epoch is None or epoch < 0 else epoch) if run in have else np.nan
        if np.isfinite(a):
            acc[run] = a
    lacking = [r for r in chosen if r not in acc]
    if not acc:
        raise PlotError(
            f"sharpness_vs_accuracy: no run has a recorded test accuracy at its sharpness step "
            f"({', '.join(f'{r}: step {s}' for r, s in chosen.items())}); histories hold runs {sorted(have)} "
            "(run.json of the training runs, `landscape plot --runs CHECKPOINTS`)"
        )
    colors = run_colors(runs_of(ds), colors)
    with style():
        n = len(rhos)
        fig = figure(COLUMN + 0.4 if n == 1 else 2.5 * n + 0.6, 2.8)
        axes = list(np.atleast_1d(fig.subplots(1, n, sharey=True)))
        for ax, r in zip(axes, rhos):
            for run, a in acc.items():
                d = ds.sel(run=run, step=chosen[run], rho=r)
                x, se = float(d["sharpness_mean"]), float(d["sharpness_sem"])
                if not np.isfinite(x):
                    continue
                ax.errorbar([x], [100.0 * a], xerr=[se if np.isfinite(se) else 0.0], color=colors[run],
                            marker="o", markersize=6, capsize=2.5, linestyle="none", label=run)
                ax.annotate(run, (x, 100.0 * a), textcoords="offset points", xytext=(5, 4), fontsize=7,
                            color=colors[run])
            ax.set_title(rf"$\rho$ = {r:g}")
            ax.set_xlabel(_ylabel(ds))
            ax.margins(x=0.25, y=0.25)
        axes[0].set_ylabel("test accuracy (%)")
        what = ", ".join(t for t in (_what(ds), step_note({r: chosen[r] for r in acc})) if t)
        if lacking:
            what += f"\nno test accuracy: {', '.join(lacking)}"
        if n == 1:
            axes[0].set_title(", ".join(t for t in (rf"$\rho$ = {rhos[0]:g}", what) if t))
            axes[0].legend(title="run")
        else:
            handles, labels = axes[0].get_legend_handles_labels()
            fig.legend(handles, labels, loc="outside right upper", title="run")
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
