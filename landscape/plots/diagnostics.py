"""Per-step training diagnostics from ``run.json`` (``TrainConfig.diagnostics_every``).

The trainer records, every k steps, ``{"step", "epoch", "lr", "loss"}`` and, for the SAM
family, ``eps_norm`` (||eps||), ``grad_cosine`` (plain vs perturbed gradient), ``loss_perturbed``
and ``sharpness`` = L(w+eps) - L(w); for MSAM ``momentum_cosine``. :func:`diagnostics_dataset`
turns that list into a Dataset over ``step``; :func:`training_diagnostics` draws one panel per
quantity (one-step sharpness during training, edge-of-stability studies).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from landscape.plots.common import PlotError, figure, integer_axis, number, run_colors, style

__all__ = ["PANELS", "diagnostics_dataset", "training_diagnostics"]

# Quantities drawn, in panel order -> (axis label, long_name).
PANELS: dict[str, tuple[str, str]] = {
    "loss": ("training loss (nats)", "training loss of the step's batch"),
    "sharpness": ("L(w+eps) - L(w) (nats)", "one-step sharpness of the step's batch (SAM)"),
    "eps_norm": ("||eps||", "norm of the SAM perturbation"),
    "grad_cosine": ("cos(g(w), g(w+eps))", "cosine between the plain and the perturbed gradient"),
    "momentum_cosine": ("cos(momentum, g)", "cosine between momentum and gradient (MSAM)"),
}


def diagnostics_dataset(run_json: Mapping[str, Any], *, run: str | None = None) -> xr.Dataset:
    """The ``diagnostics`` list of a ``run.json`` dict as a Dataset over ``step``.

    Every numeric key becomes a variable (missing entries NaN); a step recorded twice (a
    resumed run redoes the steps after its last checkpoint) keeps the later record.

    Raises:
        PlotError: no ``diagnostics`` list (the run had no ``diagnostics_every``), an empty
            one, or records without an integer ``step``.

    Example:
        >>> ds = diagnostics_dataset({"diagnostics": [{"step": 2, "epoch": 1, "loss": 2.0, "sharpness": 0.1},
        ...                                           {"step": 4, "epoch": 1, "loss": 1.5, "sharpness": 0.2}]})
        >>> ds.sharpness.dims, ds.step.values.tolist(), float(ds.loss.sel(step=4))
        (('step',), [2, 4], 1.5)
    """
    if not isinstance(run_json, Mapping):
        raise PlotError(f"diagnostics_dataset takes the dict read from run.json, got {type(run_json).__name__}")
    records = run_json.get("diagnostics")
    if not isinstance(records, list):
        raise PlotError("run.json has no 'diagnostics' list (train with diagnostics_every=K to record them)")
    if not records:
        raise PlotError("run.json has an empty 'diagnostics' list: no recorded step yet")
    if not all(isinstance(r, Mapping) and isinstance(r.get("step"), int) and not isinstance(r.get("step"), bool)
               for r in records):
        raise PlotError("every run.json diagnostics record needs an integer 'step'")
    by_step = {int(r["step"]): r for r in records}
    steps = sorted(by_step)
    keys: list[str] = []
    for s in steps:
        for key, v in by_step[s].items():
            if key != "step" and key not in keys and isinstance(v, (int, float)) and not isinstance(v, bool):
                keys.append(key)
    data_vars = {
        key: ("step", np.array([number(by_step[s].get(key)) for s in steps]),
              {"long_name": PANELS.get(key, (key, key.replace("_", " ")))[1], "units": "1"})
        for key in keys
    }
    config = run_json.get("config") or {}
    name = run or (str(config.get("out", "")).rstrip("/").split("/")[-1] if isinstance(config, Mapping) else "") or "run"
    return xr.Dataset(
        data_vars,
        coords={"step": ("step", np.array(steps, dtype=np.int64), {"long_name": "optimizer step", "units": "1"})},
        attrs={"analysis": "training_diagnostics", "run": name},
    )


def training_diagnostics(
    datasets: xr.Dataset | Mapping[str, xr.Dataset] | Sequence[xr.Dataset],
    *,
    colors: Mapping[str, Any] | None = None,
) -> Figure:
    """One panel per recorded quantity of :data:`PANELS` against the step, one color per run.

    Args:
        datasets: one :func:`diagnostics_dataset`, a mapping run -> Dataset, or a list (named by
            each Dataset's ``run`` attribute).
        colors: run -> color.

    Returns:
        The Figure; panels for quantities no run recorded are left out (plain SGD: the loss only).

    Raises:
        PlotError: no run given, or none holds a quantity of :data:`PANELS`.
    """
    if isinstance(datasets, xr.Dataset):
        items = [(str(datasets.attrs.get("run", "run")), datasets)]
    elif isinstance(datasets, Mapping):
        items = [(str(k), v) for k, v in datasets.items()]
    else:
        items = [(str(d.attrs.get("run", f"run{i}")), d) for i, d in enumerate(datasets)]
    if not items:
        raise PlotError("training_diagnostics: no run given")
    panels = [k for k in PANELS if any(k in d and np.isfinite(d[k].values).any() for _, d in items)]
    if not panels:
        raise PlotError(
            "training_diagnostics needs diagnostics_dataset results with any of "
            f"{', '.join(PANELS)}; got variables [{', '.join(sorted({str(v) for _, d in items for v in d.data_vars}))}]"
        )
    colors = run_colors([n for n, _ in items], colors)
    with style():
        ncols = min(len(panels), 3)
        nrows = math.ceil(len(panels) / ncols)
        fig = figure(2.4 * ncols + 0.4, 2.2 * nrows)
        axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
        for ax, key in zip(axes, panels):
            for name, d in items:
                if key not in d:
                    continue
                y = d[key].values.astype(float)
                ok = np.isfinite(y)
                if ok.any():
                    ax.plot(d["step"].values[ok], y[ok], color=colors[name], label=name,
                            marker="o" if ok.sum() <= 20 else None, markersize=3)
            ax.set_xlabel("step")
            ax.set_ylabel(PANELS[key][0])
            integer_axis(ax)
            if key == "sharpness":
                ax.axhline(0.0, color="0.6", linewidth=0.8, zorder=0)
        for ax in axes[len(panels):]:
            ax.set_visible(False)
        axes[0].legend(title="run", loc="best")
    return fig
