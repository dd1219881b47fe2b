"""What every figure shares: style, one color per run, labels from attrs, step selection, saving.

Figures are built on :class:`matplotlib.figure.Figure` with an Agg canvas, never through
``pyplot``: no global figure registry to leak memory in a loop over many results, no
interactive backend to pick, and nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from landscape.atomic import atomic_write

__all__ = [
    "PlotError",
    "axis_label",
    "figure",
    "integer_axis",
    "last_steps",
    "log_axis",
    "options",
    "panel_grid",
    "require",
    "run_colors",
    "runs_of",
    "save",
    "select_steps",
    "style",
    "with_run_step",
]

# Okabe & Ito (2008): distinguishable with the common colour-vision deficiencies and in grey.
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
# Paul Tol's "muted" scheme, also colour-blind safe: runs 9-17 (e.g. 3 optimizers x 3 seeds).
TOL_MUTED = ("#332288", "#88CCEE", "#44AA99", "#117733", "#999933", "#DDCC77", "#CC6677", "#882255", "#AA4499")
PALETTE = OKABE_ITO + TOL_MUTED

STYLE: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.4,
    "lines.markersize": 4,
    "legend.frameon": False,
    "pdf.fonttype": 42,  # TrueType in PDFs: editable text, accepted by journals
    "savefig.dpi": 200,
}

# Width of a figure that spans one column of a two-column paper, in inches.
COLUMN = 3.4


class PlotError(ValueError):
    """A Dataset that the asked figure cannot be drawn from (wrong analysis, missing step...)."""


@contextlib.contextmanager
def style() -> Iterator[None]:
    """The house style, as an rc context around figure construction."""
    with matplotlib.rc_context(STYLE):
        yield


def figure(width: float, height: float) -> Figure:
    """A constrained-layout Figure on an Agg canvas (no pyplot state)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def panel_grid(n: int, ncols: int = 3) -> tuple[Figure, list]:
    """A Figure with ``n`` panels (curves over steps) in rows of at most ``ncols``, sharing x;
    the unused cells of the last row are hidden. Call inside :func:`style`."""
    ncols = min(n, ncols)
    nrows = math.ceil(n / ncols)
    fig = figure(COLUMN if ncols == 1 else 2.5 * ncols + 0.8, 2.6 if nrows == 1 else 2.2 * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def log_axis(ax, which: str = "y") -> None:
    """Log scale with plain tick labels (``0.2``, ``5``, ``100``), never ``2 x 10^-1``.

    Over less than about two decades the 2-3-5 minor ticks are labelled too, so an axis always
    shows at least a few numbers.
    """
    from matplotlib import ticker

    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    lo, hi = (ax.get_ylim() if which == "y" else ax.get_xlim())
    plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")
    axis.set_major_formatter(plain)
    if lo > 0 and np.log10(hi / lo) < 2:
        axis.set_minor_locator(ticker.LogLocator(subs=(2.0, 3.0, 5.0)))
        axis.set_minor_formatter(plain)
    else:
        axis.set_minor_formatter(ticker.NullFormatter())


def integer_axis(ax, which: str = "x") -> None:
    """Ticks on whole numbers only (epochs, steps): no ``1.5`` epochs on a short run."""
    from matplotlib import ticker

    (ax.xaxis if which == "x" else ax.yaxis).set_major_locator(ticker.MaxNLocator(integer=True, steps=[1, 2, 5, 10]))


def runs_of(ds: xr.Dataset) -> list[str]:
    return [str(r) for r in ds["run"].values]


def run_colors(runs: Iterable[str], colors: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One color per run: ``colors`` where given, else :data:`PALETTE` in order (Okabe-Ito, then
    Tol muted: 17 colour-blind-safe colours; past those, tab20).

    Pass the same mapping to every figure (the CLI does) so a run keeps its color throughout.

    Example:
        >>> run_colors(["sgd", "sam"])["sam"]
        '#D55E00'
    """
    colors = dict(colors or {})
    out: dict[str, Any] = {}
    free = [c for c in PALETTE if c not in colors.values()]
    extra = [matplotlib.colormaps["tab20"](i) for i in range(20)]
    i = 0
    for run in runs:
        if run in colors:
            out[run] = colors[run]
            continue
        out[run] = free[i] if i < len(free) else extra[(i - len(free)) % len(extra)]
        i += 1
    return out


def axis_label(obj: xr.DataArray | Mapping[str, Any] | None, fallback: str, units: str | None = None) -> str:
    """``"long_name (units)"`` from a variable's attrs; dimensionless units ("1") are left out."""
    attrs = getattr(obj, "attrs", obj) or {}
    name = str(attrs.get("long_name") or fallback)
    u = units if units is not None else str(attrs.get("units", "1"))
    return name if u in ("", "1", "count") else f"{name} ({u})"


def require(ds: Any, figure_name: str, analysis: str, variables: Sequence[str], dims: Sequence[str] = ()) -> None:
    """Raise :class:`PlotError` unless ``ds`` is a Dataset of ``analysis`` with ``variables``.

    The message names the figure, what it needs and what it got, so a Dataset of the wrong
    analysis is recognised at once.
    """
    if not isinstance(ds, xr.Dataset):
        raise PlotError(f"{figure_name} takes an xarray.Dataset of a {analysis!r} result, got {type(ds).__name__}")
    got = ds.attrs.get("analysis")
    missing = [v for v in variables if v not in ds.variables]
    missing_dims = [d for d in dims if d not in ds.dims]
    if (got is not None and got != analysis) or missing or missing_dims:
        what = f"analysis={got!r}" if got is not None else "no 'analysis' attribute"
        need = f"variables {', '.join(variables)}" + (f" over {', '.join(dims)}" if dims else "")
        raise PlotError(
            f"{figure_name} needs a {analysis!r} result ({need}); got a Dataset with {what}, "
            f"variables [{', '.join(map(str, ds.data_vars))}] and dims {dict(ds.sizes)}"
            + (f"; missing {', '.join(missing + missing_dims)}" if missing or missing_dims else "")
        )


def options(ds: xr.Dataset) -> dict[str, Any]:
    """The analysis options a result was computed with (its ``config_json``); ``{}`` when absent
    or unreadable (a figure then leaves the detail out of its labels).

    Example:
        >>> options(xr.Dataset(attrs={"config_json": '{"top_k": 5}'}))
        {'top_k': 5}
    """
    import json

    try:
        out = json.loads(str(ds.attrs.get("config_json", "{}")))
    except (ValueError, TypeError):
        return {}
    return dict(out) if isinstance(out, dict) else {}


def with_run_step(ds: xr.Dataset, run: str = "model") -> xr.Dataset:
    """Give a Dataset length-1 ``run`` / ``step`` dimensions where it has none.

    A result file (:func:`landscape.results.read_result`) and a combined folder
    (:func:`landscape.results.open_results`) already have both; an analysis' direct output has
    neither and becomes run ``run`` at step 0.
    """
    if "run" not in ds.dims:
        ds = ds.expand_dims(run=[ds["run"].item() if "run" in ds.coords else run])
    if "step" not in ds.dims:
        ds = ds.expand_dims(step=[int(ds["step"].item()) if "step" in ds.coords else 0])
    return ds


def _has_data(da: xr.DataArray) -> np.ndarray:
    """Boolean over (run, step): whether the variable holds any finite value there."""
    other = [d for d in da.dims if d not in ("run", "step")]
    ok = np.isfinite(da.transpose("run", "step", *other).values.astype(float))
    return ok.reshape(ok.shape[0], ok.shape[1], -1).any(-1)


def last_steps(da: xr.DataArray) -> dict[str, int]:
    """Per run, the last step at which ``da`` has data (runs without any data are left out)."""
    ok = _has_data(da)
    steps = da["step"].values
    return {str(r): int(steps[np.flatnonzero(ok[i])[-1]]) for i, r in enumerate(da["run"].values) if ok[i].any()}


def select_steps(da: xr.DataArray, step: int | None) -> dict[str, int]:
    """Per run, the step a one-step figure shows: ``step`` where given, else the run's last.

    Runs without data at ``step`` are left out; if no run has it, :class:`PlotError` lists the
    steps that are there.
    """
    if step is None:
        chosen = last_steps(da)
        if not chosen:
            raise PlotError(f"{da.name!r} holds no finite values for any run and step")
        return chosen
    ok = _has_data(da)
    steps = [int(s) for s in da["step"].values]
    if int(step) in steps:
        j = steps.index(int(step))
        chosen = {str(r): int(step) for i, r in enumerate(da["run"].values) if ok[i, j]}
        if chosen:
            return chosen
    have = sorted({steps[j] for j in range(len(steps)) if ok[:, j].any()})
    raise PlotError(f"step={step} has no {da.name!r} data; steps with data: {have}")


def number(v: Any) -> float:
    """A JSON value as a float for plotting: NaN for booleans, None and anything non-numeric
    (``run.json`` records written by other versions may lack or mistype a field).

    Example:
        >>> number(3), number(None), number("x")
        (3.0, nan, nan)
    """
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def step_note(chosen: Mapping[str, int]) -> str:
    """``"step 500"`` when all runs share the step, else ``"last step of each run"``."""
    values = set(chosen.values())
    return f"step {values.pop()}" if len(values) == 1 else "last step of each run"


def save(fig: Figure, path: str | os.PathLike, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Write ``fig`` as ``path.png`` and ``path.pdf`` (any suffix of ``path`` is replaced).

    Each file is drawn into a hidden temporary file in the target folder and then
    ``os.replace``d, so an interrupted save never leaves a truncated figure under the final
    name. This is the only function of :mod:`landscape.plots` that writes to disk.

    Returns:
        The paths written, in ``formats`` order.

    Example:
        >>> import tempfile
        >>> fig = figure(2, 2); _ = fig.add_subplot().plot([0, 1])
        >>> [p.suffix for p in save(fig, tempfile.mkdtemp() + "/demo")]
        ['.png', '.pdf']
    """
    base = Path(path)
    if base.suffix.lower().lstrip(".") in ("png", "pdf", "svg"):
        base = base.with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for fmt in formats:
        target = base.with_name(f"{base.name}.{fmt}")
        atomic_write(target, lambda tmp, fmt=fmt: fig.savefig(
            tmp, format=fmt, dpi=STYLE["savefig.dpi"], metadata=_metadata(fmt)))
        written.append(target)
    return written


def _metadata(fmt: str) -> dict[str, Any] | None:
    # A fixed creation date keeps PDFs byte-identical across re-draws of the same data.
    if fmt == "pdf":
        return {"Creator": "landscape", "CreationDate": None}
    if fmt == "png":
        return {"Software": "landscape"}
    return None
