"""Training curves from the ``run.json`` files the trainer writes (:func:`landscape.train`).

``run.json`` holds ``{"config": {...}, "history": [{"epoch", "step", "train_loss", "train_acc",
"test_loss", "test_acc", "lr", "seconds"}, ...], "status": ...}``; :func:`history_dataset` turns
it into a Dataset over ``epoch`` so curves use the same tools as analysis results.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from landscape.plots.common import (
    PlotError,
    figure,
    integer_axis,
    log_axis,
    number,
    run_colors,
    style,
)

__all__ = ["combine_histories", "history_dataset", "training_curves"]

# Known history keys -> (long_name, units).
_META: dict[str, tuple[str, str]] = {
    "step": ("optimizer steps taken by the end of the epoch", "1"),
    "train_loss": ("training loss (mean over the epoch, at the moving weights)", "nats"),
    "train_acc": ("training accuracy (over the epoch, at the moving weights)", "1"),
    "test_loss": ("test loss at the end of the epoch", "nats"),
    "test_acc": ("test accuracy at the end of the epoch", "1"),
    "lr": ("learning rate at the end of the epoch", "1"),
    "seconds": ("wall-clock time of the epoch", "s"),
}


def history_dataset(run_json: Mapping[str, Any], *, run: str | None = None) -> xr.Dataset:
    """A ``run.json`` dict as a Dataset over ``epoch``.

    Every numeric history key becomes a variable (``train_loss``, ``train_acc``, ``test_loss``,
    ``test_acc``, ``lr``, ``step``, ``seconds`` and any extra metric); entries lacking a key hold
    NaN there. Attributes: ``config_json`` (the training config), ``status`` and ``run`` (the
    ``run`` argument, else the config's ``out`` folder name, else ``"run"``).

    Raises:
        PlotError: no ``history`` list, an empty one, or entries without ``epoch``.

    Example:
        >>> ds = history_dataset({"config": {"out": "checkpoints/sgd"}, "history": [
        ...     {"epoch": 1, "step": 10, "train_loss": 2.0, "test_acc": 0.5}]})
        >>> ds.train_loss.dims, ds.attrs["run"], float(ds.test_acc.sel(epoch=1))
        (('epoch',), 'sgd', 0.5)
    """
    if not isinstance(run_json, Mapping):
        raise PlotError(f"history_dataset takes the dict read from run.json, got {type(run_json).__name__}")
    hist = run_json.get("history")
    if not isinstance(hist, list):
        raise PlotError("run.json has no 'history' list (keys: " + ", ".join(map(str, run_json)) + ")")
    if not hist:
        raise PlotError("run.json has an empty history: no epoch has finished yet")
    if not all(isinstance(h, Mapping) and "epoch" in h for h in hist):
        raise PlotError("every run.json history entry needs an 'epoch'")
    # A resumed run may repeat an epoch; the later entry wins.
    by_epoch = {int(h["epoch"]): h for h in hist}
    epochs = sorted(by_epoch)
    keys: list[str] = []
    for e in epochs:
        for key, v in by_epoch[e].items():
            if key != "epoch" and key not in keys and isinstance(v, (int, float)) and not isinstance(v, bool):
                keys.append(key)
    data_vars = {}
    for key in keys:
        long_name, units = _META.get(key, (key.replace("_", " "), "1"))
        data_vars[key] = ("epoch", np.array([number(by_epoch[e].get(key)) for e in epochs]),
                          {"long_name": long_name, "units": units})
    config = run_json.get("config") or {}
    name = run or (str(config.get("out", "")).rstrip("/").split("/")[-1] if isinstance(config, Mapping) else "") or "run"
    return xr.Dataset(
        data_vars,
        coords={"epoch": ("epoch", np.array(epochs, dtype=np.int64), {"long_name": "epoch", "units": "1"})},
        attrs={
            "analysis": "training",
            "run": name,
            "status": str(run_json.get("status", "")),
            "config_json": json.dumps(config, sort_keys=True, default=str),
        },
    )


def combine_histories(histories: Mapping[str, xr.Dataset] | Sequence[xr.Dataset]) -> xr.Dataset:
    """Several :func:`history_dataset` results as one Dataset over (run, epoch).

    Runs of different lengths are outer-joined (NaN past a run's last epoch). A sequence uses
    each Dataset's ``run`` attribute as its name.
    """
    if isinstance(histories, Mapping):
        items = list(histories.items())
    else:
        items = [(str(h.attrs.get("run", f"run{i}")), h) for i, h in enumerate(histories)]
    if not items:
        raise PlotError("combine_histories: no run given")
    names = [n for n, _ in items]
    if len(set(names)) != len(names):
        raise PlotError(f"combine_histories: run names repeat: {names}")
    parts = []
    for name, h in items:
        h = h.drop_attrs() if hasattr(h, "drop_attrs") else h.copy(deep=False).assign_attrs({})
        parts.append(h.expand_dims(run=[name]))
    out = xr.concat(parts, dim="run", join="outer", combine_attrs="drop")
    out["run"].attrs.update(long_name="training run", units="1")
    out.attrs["analysis"] = "training"
    return out


def training_curves(
    histories: xr.Dataset | Mapping[str, xr.Dataset] | Sequence[xr.Dataset],
    *,
    colors: Mapping[str, Any] | None = None,
) -> Figure:
    """Loss and accuracy against epochs, train (solid) and test (dashed), one color per run.

    Args:
        histories: one :func:`history_dataset`, several (a mapping run -> Dataset or a list),
            or a :func:`combine_histories` Dataset over (run, epoch).
        colors: run -> color.

    Returns:
        The Figure: two axes (loss, accuracy in %), each with a train and a test line per run
        (lines whose metric is missing are left out). Run names label the train lines.

    Raises:
        PlotError: not a training history (no ``train_loss`` / ``test_loss`` / ...).
    """
    if isinstance(histories, xr.Dataset):
        ds = histories if "run" in histories.dims else combine_histories([histories])
    else:
        ds = combine_histories(histories)
    metrics = ("train_loss", "test_loss", "train_acc", "test_acc")
    if ds.attrs.get("analysis") not in (None, "training") or not any(m in ds for m in metrics):
        raise PlotError(
            f"training_curves needs training histories (history_dataset of run.json: variables "
            f"{', '.join(metrics)} over epoch); got analysis={ds.attrs.get('analysis')!r} with "
            f"variables [{', '.join(map(str, ds.data_vars))}]"
        )
    if "epoch" not in ds.dims:
        raise PlotError(f"training_curves needs an 'epoch' dimension; got dims {dict(ds.sizes)}")
    runs = [str(r) for r in ds["run"].values]
    colors = run_colors(runs, colors)
    with style():
        fig = figure(6.8, 2.5)
        ax_loss, ax_acc = fig.subplots(1, 2)
        few = ds.sizes["epoch"] <= 20  # markers show where the points are on short runs
        for run in runs:
            d = ds.sel(run=run)
            for ax, split, scale in ((ax_loss, "loss", 1.0), (ax_acc, "acc", 100.0)):
                for part, dash in (("train", "-"), ("test", "--")):
                    key = f"{part}_{split}"
                    if key not in d:
                        continue
                    y = d[key].values.astype(float) * scale
                    ok = np.isfinite(y)
                    if not ok.any():
                        continue
                    ax.plot(d["epoch"].values[ok], y[ok], color=colors[run], linestyle=dash,
                            marker="o" if few else None, markersize=3,
                            label=run if part == "train" else "_nolegend_")
        ax_loss.set_ylabel("cross-entropy loss (nats)")
        ax_acc.set_ylabel("accuracy (%)")
        for ax in (ax_loss, ax_acc):
            ax.set_xlabel("epoch")
            integer_axis(ax)
        losses = [ds[k].values for k in ("train_loss", "test_loss") if k in ds]
        vals = np.concatenate([v[np.isfinite(v)].ravel() for v in losses]) if losses else np.array([])
        if vals.size and (vals > 0).all() and vals.max() / vals.min() >= 10:
            log_axis(ax_loss, "y")
        ax_loss.legend(title="run", loc="best")
        styles = [Line2D([], [], color="0.3", linestyle="-"), Line2D([], [], color="0.3", linestyle="--")]
        ax_acc.legend(styles, ["train", "test"], loc="best")
    return fig
