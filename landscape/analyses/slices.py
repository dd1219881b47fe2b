"""Loss-landscape slices: the loss on a 1-D line or a 2-D plane through the weights.

The visualization of Li et al. (2018), "Visualizing the loss landscape of neural nets"
(arXiv 1712.09913), used by SAM (Foret et al. 2021, Fig. 1) and MSAM (Becker et al. 2024,
Fig. 4): ``L(theta0 + alpha d1 [+ beta d2])`` on a grid of ``alpha`` (and ``beta``), for
directions ``d1``, ``d2`` keyed by parameter name (:mod:`landscape.directions` makes them:
filter-normalized random, checkpoint interpolation, planes through three checkpoints, momentum,
gradient, Hessian eigenvectors, trajectory PCA).

How a grid point is evaluated (one mechanism, :class:`~landscape.objective.Objective`):

* the data are staged on the model's device once, as the objective's fixed batches;
* the flat directions live in memory as one ``P x k`` matrix ``D``; a point's parameters are
  one fused ``torch.addmv(theta0, D, (alpha, beta))`` (``torch.addmm`` for a chunk of points
  with ``vmap=True``), never re-read or rebuilt per tensor;
* the model is never mutated: every forward pass is a ``functional_call`` under ``no_grad``;
* the data-set loss and accuracy come from ``Objective.loss_and_error`` (the exact mean over
  examples, accumulated in float64).

BatchNorm is explicit and recorded in ``attrs["bn_mode"]``:

* ``"eval"``: the running statistics of the centre at every point (Li et al.'s choice);
* ``"recompute"``: at every point the statistics are re-estimated on the first
  ``recompute_batches`` batches in train mode with exact cumulative averaging (each batch
  weighs ``1/K``, as ``torch.optim.swa_utils.update_bn``), on throw-away copies of the buffers,
  then the point is evaluated in eval mode with them. Stale statistics can make a landscape
  meaningless (measured: loss 15.3 vs 0.20 on the same weights);
* ``"batch"``: batch statistics of each fixed batch (``Objective`` ``bn_mode="train"``);
  ``"train"`` is accepted as its alias.

Grids contain 0 exactly (a value within 1e-9 of the grid's span from 0 is snapped to it, else
0 is inserted: ``"-1:1:20"`` has 21 points) and are sorted ascending; 2-D results are indexed
``(alpha, beta)`` for any grid shape (the reference tool's meshgrid order mis-shapes non-square
grids). Large grids are computed in ``parts`` (contiguous blocks of ``alpha`` rows; each part is
its own result, so batch runs resume and spread them over workers) and joined with
:func:`combine_parts`.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).eval()
    >>> x, y = torch.randn(32, 3), torch.randint(0, 2, (32,))
    >>> g = torch.Generator().manual_seed(0)
    >>> d1 = {n: torch.randn(p.shape, generator=g) for n, p in model.named_parameters()}
    >>> ds = loss_slice(model, (x, y), d1, grid="-1:1:5", progress=False)
    >>> ds.loss.dims, ds.alpha.values.tolist()
    (('alpha',), [-1.0, -0.5, 0.0, 0.5, 1.0])
    >>> bool(ds.loss.sel(alpha=0.0) == ds.centre_loss)
    True
"""

from __future__ import annotations

import contextlib
import json
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase

from landscape.analyses.common import make_options, stamp
from landscape.config import ConfigError, check
from landscape.objective import Objective, ObjectiveOptions
from landscape.params import select
from landscape.progress import Progress

__all__ = [
    "BN_MODES",
    "KINDS",
    "METRICS",
    "LossSliceOptions",
    "SliceError",
    "SliceOptions",
    "combine_parts",
    "grid_axes",
    "loss_slice",
    "slice_analysis",
    "slice_directions",
    "slice_inputs",
]

BN_MODES = ("eval", "recompute", "batch")
METRICS = ("loss", "accuracy")
AXES = ("alpha", "beta")
DIRECTION_LABELS = ("d1", "d2")
# |value| <= SNAP * span is floating-point noise around 0 (linspace(-1, 1, 51)[25]), not a point.
SNAP = 1e-9
# bn_mode -> the Objective's bn_mode (recompute evaluates in eval mode with its own statistics)
_OBJECTIVE_BN = {"eval": "eval", "recompute": "eval", "batch": "train"}

GridSpec = str | int | tuple[float, ...] | tuple[str | int | tuple[float, ...], ...]


class SliceError(ValueError):
    """Bad input to a slice: a grid without points, directions that do not fit the model."""


# ----------------------------------------------------------------------------- grids


def _axis(spec: Any, axis: str) -> np.ndarray:
    """One axis' values: ``"lo:hi:num"``, an int ``num`` (on ``[-1, 1]``) or explicit numbers."""
    if isinstance(spec, str):
        bits = spec.split(":")
        try:
            if len(bits) != 3:
                raise ValueError
            lo, hi, num = float(bits[0]), float(bits[1]), int(bits[2])
        except ValueError:
            raise SliceError(f"grid for {axis}: {spec!r} is not 'lo:hi:num' (e.g. '-1:1:21')") from None
        if num < 1:
            raise SliceError(f"grid for {axis}: {spec!r} has no points (num={num}); accepted: num >= 1")
        values = np.linspace(lo, hi, num)
    elif isinstance(spec, numbers.Integral) and not isinstance(spec, bool):
        if spec < 1:
            raise SliceError(f"grid for {axis}: {spec} points is no grid; accepted: an int >= 1 (points on [-1, 1])")
        values = np.linspace(-1.0, 1.0, int(spec))
    else:
        try:
            values = np.asarray(spec, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise SliceError(f"grid for {axis}: {spec!r} is not accepted; accepted: 'lo:hi:num', an int number "
                             "of points on [-1, 1], or a sequence of numbers") from None
        if values.size == 0:
            raise SliceError(f"grid for {axis} has no points; accepted: 'lo:hi:num', an int >= 1 or a non-empty "
                             "sequence of numbers")
    if not np.all(np.isfinite(values)):
        raise SliceError(f"grid for {axis} has non-finite values: {values.tolist()}")
    values = np.sort(values)
    span = float(values[-1] - values[0]) or float(np.abs(values).max()) or 1.0
    values[np.abs(values) <= SNAP * span] = 0.0
    if not np.any(values == 0.0):
        values = np.sort(np.append(values, 0.0))
    if np.any(np.diff(values) == 0):
        raise SliceError(f"grid for {axis} repeats values: {values.tolist()}")
    return values


def _per_axis(grid: Any) -> bool:
    return isinstance(grid, list | tuple) and len(grid) > 0 and all(
        isinstance(g, str | list | tuple | np.ndarray | torch.Tensor) for g in grid)


def grid_axes(grid: Any, ndim: int) -> list[np.ndarray]:
    """The sorted coordinate values of each axis (``alpha``, then ``beta``), each containing 0.

    ``grid``: one spec for every axis or a sequence of one spec per axis; a spec is
    ``"lo:hi:num"`` (``numpy.linspace``), an int ``num`` (``num`` points on ``[-1, 1]``) or a
    sequence of numbers. A tuple ``(lo, hi, num)`` would read as a three-point grid, so ranges
    are strings.

    Example:
        >>> [a.tolist() for a in grid_axes(["-1:1:3", [0.5, 2]], 2)]
        [[-1.0, 0.0, 1.0], [0.0, 0.5, 2.0]]
        >>> grid_axes(4, 1)[0].round(3).tolist()
        [-1.0, -0.333, 0.0, 0.333, 1.0]
    """
    if isinstance(grid, np.ndarray | torch.Tensor) and np.ndim(grid) == 2:
        grid = [np.asarray(g) for g in grid]
    if _per_axis(grid):
        specs = list(grid)
        if len(specs) != ndim:
            raise SliceError(f"grid has {len(specs)} per-axis specs for a {ndim}-D slice; give one spec for every "
                             f"axis or exactly {ndim}")
    else:
        specs = [grid] * ndim
    return [_axis(s, AXES[k]) for k, s in enumerate(specs)]


# ----------------------------------------------------------------------------- options


def _plain(value: Any) -> Any:
    """Arrays and tensors in a grid spec -> lists (options stay JSON-plain)."""
    if isinstance(value, np.ndarray | torch.Tensor):
        return np.asarray(value).tolist()
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    return value


@dataclass(frozen=True)
class LossSliceOptions(ObjectiveOptions):
    """Options of :func:`loss_slice` (same names, same defaults), on top of the shared
    :class:`~landscape.objective.ObjectiveOptions`; ``bn_mode`` here is ``"eval"``,
    ``"recompute"`` or ``"batch"`` (``"train"`` is stored as ``"batch"``).

    Example:
        >>> LossSliceOptions(bn_mode="train").bn_mode
        'batch'
        >>> LossSliceOptions(bn_mode="evl")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        landscape.config.ConfigError: LossSliceOptions.bn_mode='evl' is not accepted (did you mean 'eval'?); accepted: 'eval', 'recompute', 'batch'
    """

    bn_mode: Literal["eval", "recompute", "batch"] = "eval"
    grid: GridSpec = "-1:1:21"
    metrics: tuple[Literal["loss", "accuracy"], ...] = ("loss", "accuracy")
    recompute_batches: int | None = None
    part: int | None = None
    parts: int = 1
    vmap: bool = False
    vmap_chunk: int = 16
    autocast: Literal["bf16"] | None = None
    memory_format: Literal["auto", "contiguous", "channels_last"] = "auto"
    keep_directions: bool = True

    def _normalize(self) -> None:
        super()._normalize()
        if self.bn_mode == "train":  # the Objective's name for batch statistics
            object.__setattr__(self, "bn_mode", "batch")
        object.__setattr__(self, "grid", _plain(self.grid))
        if isinstance(self.metrics, str):
            object.__setattr__(self, "metrics", (self.metrics,))

    def validate(self) -> None:
        super().validate()
        name = type(self).__name__
        pos = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1  # noqa: E731
        try:
            grid_axes(self.grid, 2 if _per_axis(self.grid) and len(self.grid) == 2 else 1)
        except SliceError as e:
            raise ConfigError(f"{name}.grid: {e}") from None
        check(len(self.metrics) > 0 and len(set(self.metrics)) == len(self.metrics),
              f"{name}.metrics must name each of {', '.join(METRICS)} at most once and at least one, "
              f"got {self.metrics!r}")
        check(self.recompute_batches is None or pos(self.recompute_batches),
              f"{name}.recompute_batches must be None (every batch) or a positive int, got {self.recompute_batches!r}")
        check(pos(self.parts), f"{name}.parts must be a positive int, got {self.parts!r}")
        check(self.part is None or (isinstance(self.part, int) and 0 <= self.part < self.parts),
              f"{name}.part must be None (the whole grid) or an int in [0, parts={self.parts}), got {self.part!r}")
        check(pos(self.vmap_chunk), f"{name}.vmap_chunk must be a positive int, got {self.vmap_chunk!r}")
        check(self.autocast is None or self.dtype != "float64",
              f"{name}.autocast={self.autocast!r} with dtype='float64' is not accepted: bf16 autocast is measured "
              "against float32; use dtype=None or 'float32'")

    def objective_kwargs(self) -> dict[str, Any]:
        kwargs = super().objective_kwargs()
        kwargs["bn_mode"] = _OBJECTIVE_BN[self.bn_mode]
        return kwargs

    def split_tasks(self) -> list[LossSliceOptions]:
        """One options set per part for the batch runner: ``parts > 1`` with ``part=None`` gives
        ``parts`` tasks (``part=0..parts-1``), each its own, resumable result; else ``[self]``."""
        if self.part is None and self.parts > 1:
            return [self.replace(part=i) for i in range(self.parts)]
        return [self]


# ----------------------------------------------------------------------------- directions


def _is_plane(obj: Any) -> bool:
    return hasattr(obj, "d1") and hasattr(obj, "d2") and not isinstance(obj, Mapping)


def _direction_list(directions: Any) -> list[Mapping[str, Tensor]]:
    if isinstance(directions, Mapping):
        return [directions]
    if _is_plane(directions):
        return [directions.d1] if directions.d2 is None else [directions.d1, directions.d2]
    if isinstance(directions, Sequence) and not isinstance(directions, str) and 1 <= len(directions) <= 2 \
            and all(isinstance(d, Mapping) for d in directions):
        return list(directions)
    raise SliceError(
        f"directions of type {type(directions).__name__} are not accepted; accepted: one dict "
        "{parameter name: tensor} (1-D slice), a list of two such dicts (2-D), or a landscape.directions.Plane"
    )


def _flat_directions(obj: Objective, dirs: list[Mapping[str, Tensor]], params: str) -> Tensor:
    """The ``P x k`` matrix of flat directions in the objective's order (absent names are 0)."""
    shapes = dict(zip(obj.names, obj.shapes))
    cols = []
    for j, d in enumerate(dirs):
        label = DIRECTION_LABELS[j]
        full = {}
        for n, t in d.items():
            if n not in shapes:
                raise SliceError(
                    f"direction {label} has an entry {n!r} that is not a parameter of group {params!r} "
                    f"(trainable parameters only); accepted names: {', '.join(obj.names[:8])}"
                    + (", ..." if len(obj.names) > 8 else "") + " (or pass params= to widen the group)"
                )
            t = torch.as_tensor(t)
            if tuple(t.shape) != tuple(shapes[n]):
                raise SliceError(f"direction {label}: parameter {n!r} has shape {tuple(t.shape)} in the direction "
                                 f"but {tuple(shapes[n])} in the model")
            if not torch.isfinite(t).all():
                raise SliceError(f"direction {label}: parameter {n!r} has non-finite entries")
            full[n] = t.detach().to(device=obj.device, dtype=obj.theta0.dtype)
        for n, s in shapes.items():
            if n not in full:
                full[n] = torch.zeros(s, device=obj.device, dtype=obj.theta0.dtype)
        cols.append(obj.flatten(full))
    return torch.stack(cols, dim=1)


# ----------------------------------------------------------------------------- BatchNorm


def _stat_modules(model: nn.Module) -> list[tuple[str, _NormBase]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _NormBase) and m.track_running_stats
            and m.running_mean is not None]


@contextlib.contextmanager
def _momenta_restored(mods: list[tuple[str, _NormBase]]) -> Iterator[None]:
    """The modules' ``momentum`` values are put back after the block (also on errors)."""
    saved = [m.momentum for _, m in mods]
    try:
        yield
    finally:
        for (_, m), mom in zip(mods, saved):
            m.momentum = mom


def _recomputed(obj: Objective, theta: Tensor, mods: list[tuple[str, _NormBase]], batches: int) -> dict[str, Tensor]:
    """Buffers with running statistics re-estimated at ``theta`` on the first ``batches``
    batches (train-mode normalization, each batch weighing ``1/batches``); throw-away copies."""
    bufs = obj.buffer_copies()
    for name, _ in mods:
        p = f"{name}." if name else ""
        bufs[p + "running_mean"].zero_()
        bufs[p + "running_var"].fill_(1.0)
        if p + "num_batches_tracked" in bufs:
            bufs[p + "num_batches_tracked"].zero_()
    with _momenta_restored(mods):
        for i in range(batches):
            # momentum 1/(i+1) at batch i is exact cumulative averaging (what momentum=None does,
            # without reading num_batches_tracked back from the device at every batch)
            for _, m in mods:
                m.momentum = 1.0 / (i + 1)
            obj.forward(theta, i, buffers=bufs, bn_train=True)
            obj.calls["logits"] += 1  # forward-only passes, counted like Objective.logits
    return bufs


# ----------------------------------------------------------------------------- the slice


def _points(points: Any, ndim: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Labels, ``(n, ndim)`` coordinates and steps of points marked on the slice."""
    labels, coords, steps = [], [], []
    for label, value in dict(points).items():
        step = -1
        if isinstance(value, Mapping):
            step = int(value.get("step", -1))
            value = [value["alpha"], value.get("beta", 0.0)][:ndim]
        v = np.atleast_1d(np.asarray(value, dtype=np.float64))
        if v.size == 3 and ndim == 2:  # (alpha, beta, step)
            v, step = v[:2], int(v[2])
        if v.size != ndim:
            raise SliceError(f"point {label!r}: {value!r} has {v.size} coordinates for a {ndim}-D slice")
        labels.append(str(label))
        coords.append(v)
        steps.append(step)
    return labels, np.asarray(coords, dtype=np.float64).reshape(-1, ndim), np.asarray(steps, dtype=np.int64)


def _pack(loss: Tensor, err: Tensor | None) -> Tensor:
    return loss.reshape(1) if err is None else torch.stack([loss, err])


def loss_slice(
    model: nn.Module,
    data,
    directions,
    *,
    points: Mapping[str, Any] | None = None,
    direction_kind: str | None = None,
    normalization: str | None = None,
    one_d: str | None = None,
    batch_size: int | None = 256,
    max_samples: int | None = None,
    bn_mode: str = "eval",
    loss: str | Callable = "ce",
    logit_normalize: bool = False,
    params: str = "all",
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    micro_batch_size: int | None = None,
    tf32: bool = False,
    batch_fn: str | Callable | None = None,
    output_fn: str | Callable | None = None,
    grid: Any = "-1:1:21",
    metrics: Sequence[str] = ("loss", "accuracy"),
    recompute_batches: int | None = None,
    part: int | None = None,
    parts: int = 1,
    vmap: bool = False,
    vmap_chunk: int = 16,
    autocast: str | None = None,
    memory_format: str = "auto",
    keep_directions: bool = True,
    progress: bool = True,
) -> xr.Dataset:
    """The loss (and accuracy) on a line or plane ``theta0 + alpha d1 [+ beta d2]`` of the weights.

    Li et al. (2018), "Visualizing the loss landscape of neural nets" (arXiv 1712.09913); SAM
    Fig. 1 and MSAM Fig. 4 draw such slices.

    Args:
        model: the network at the centre ``theta0`` (never modified: weights, ``requires_grad``,
            train/eval flags, BatchNorm buffers and momenta are as before).
        data: any form of :mod:`landscape.inputs`; the first ``max_samples`` examples, staged once.
        directions: one dict ``{parameter name: tensor}`` (1-D), a list of two (2-D), or a
            :class:`landscape.directions.Plane`. Names are those of the group ``params``
            (trainable parameters); absent names are zero.
        points: points to mark on the slice, ``{label: alpha}`` (1-D) or ``{label: (alpha, beta)}``
            (2-D), optionally ``(alpha, beta, step)`` or ``{"alpha", "beta", "step"}``; default:
            a Plane's ``points``. Only their coordinates are stored (dim ``point``).
        direction_kind, normalization, one_d: labels recorded in ``attrs`` (how the directions
            were made); default ``"given"`` (``"plane"`` / ``"trajectory"`` for a Plane) and
            ``"unknown"``.
        batch_size, max_samples, loss, logit_normalize, params, dtype, batch_fn, output_fn: the
            shared objective options (:class:`~landscape.objective.ObjectiveOptions`).
        device, micro_batch_size, tf32: where it computes (``None``: the model's device; "cpu",
            "cuda", "cuda:N" or a ``torch.device``; the model is never moved, the objective's
            copies of its parameters are), pieces of at most ``micro_batch_size`` examples per
            batch (eval-mode statistics only) and TF32 matmuls on CUDA (off by default); see
            README "Analyses on a GPU".
        bn_mode: ``"eval"`` (the centre's running statistics), ``"recompute"`` (re-estimated at
            every point, see the module docstring) or ``"batch"`` (batch statistics; alias
            ``"train"``).
        grid: one spec for every axis or one per axis: ``"lo:hi:num"``, an int (points on
            ``[-1, 1]``) or a sequence of values; 0 is always a grid point.
        metrics: ``"loss"`` and/or ``"accuracy"`` (accuracy only for class-index targets).
        recompute_batches: batches used to re-estimate the statistics (``None``: all).
        part, parts: evaluate only block ``part`` of ``parts`` contiguous blocks of ``alpha`` rows
            (``None``: the whole grid); join the parts with :func:`combine_parts`.
        vmap: evaluate ``vmap_chunk`` grid points per forward pass with ``torch.func.vmap``
            (measured on a 2-core CPU: slower than the loop; try it on a GPU with small models).
        autocast: ``"bf16"``: forward passes under bfloat16 autocast (CUDA and CPU); the result
            records ``autocast_centre_error``, its absolute error against float32 at the centre.
        memory_format: how 4-D image inputs are staged: ``"channels_last"`` (NHWC; convolutions
            run faster on CPU and tensor-core GPUs, same values up to float rounding),
            ``"contiguous"``, or ``"auto"`` (channels_last when the model has a ``Conv2d``); the
            format used is recorded in ``attrs["memory_format"]``.
        keep_directions: store the directions (``direction_vector``, P floats per direction) so
            the same plane can be evaluated on another model or data set.
        progress: a progress bar or log lines (:mod:`landscape.progress`); ``False``: silent.

    Returns:
        ``xr.Dataset``: ``loss`` and ``accuracy`` over ``alpha`` (1-D) or ``(alpha, beta)`` (2-D),
        ``direction_norm(direction)``, ``centre_loss``, ``centre_accuracy``, ``cos_d1_d2`` (2-D),
        optional ``point_alpha`` / ``point_beta`` (dim ``point``, coords ``point_label``,
        ``point_step``), ``explained_variance(direction)`` (trajectory planes),
        ``autocast_centre_error``; attrs ``analysis="slice"``, ``ndim``, ``bn_mode``,
        ``direction_kind``, ``normalization``, ``one_d``, ``part``, ``parts`` and the common stamp.

    Raises:
        ConfigError: a grid without points, an unknown ``bn_mode`` / metric or another bad option
            (the message lists what is accepted).
        SliceError: directions whose names or shapes do not fit the model (the message names the
            parameter and both shapes), a grid with per-axis specs for the wrong number of axes,
            an empty part.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2))
        >>> x, y = torch.randn(16, 2), torch.randint(0, 2, (16,))
        >>> d = [{n: torch.ones_like(p) for n, p in m.named_parameters()},
        ...      {"0.weight": torch.ones(3, 2)}]
        >>> ds = loss_slice(m, (x, y), d, grid=["-1:1:3", "-2:2:5"], progress=False)
        >>> ds.loss.dims, ds.loss.shape
        (('alpha', 'beta'), (3, 5))
    """
    values = dict(locals())
    values["metrics"] = tuple(metrics) if not isinstance(metrics, str) else (metrics,)
    opts, objects = make_options(LossSliceOptions, values)
    return _loss_slice(model, data, directions, opts, objects, points, direction_kind, normalization, one_d, progress)


def _loss_slice(model, data, directions, opts: LossSliceOptions, objects: dict, points, direction_kind, normalization,
                one_d, progress: bool, obj: Objective | None = None) -> xr.Dataset:
    """:func:`loss_slice` on its options; ``obj``: an objective of the same options already
    built (by :func:`slice_analysis` for its directions), so the data are staged once."""
    plane = directions if _is_plane(directions) else None
    dirs = _direction_list(directions)
    ndim = len(dirs)
    axes = grid_axes(opts.grid, ndim)  # bad grids and directions are refused before the data are staged
    if obj is None:
        obj = Objective.from_options(model, data, opts, **objects)
    fmt = "contiguous"
    if opts.memory_format == "channels_last" or (
            opts.memory_format == "auto" and any(isinstance(m, nn.Conv2d) for m in model.modules())):
        fmt = "channels_last" if obj.channels_last() else "contiguous"
    D = _flat_directions(obj, dirs, opts.params)
    if points is None and plane is not None and getattr(plane, "points", None):
        steps = getattr(plane, "steps", None) or {}
        points = {k: (*v, steps.get(k, -1)) for k, v in plane.points.items()}
    if direction_kind is None and plane is not None:
        direction_kind = getattr(plane, "kind", None) or (
            "trajectory" if getattr(plane, "explained_variance", None) is not None else "plane")
    kind = direction_kind or "given"

    rows = np.array_split(np.arange(axes[0].size), opts.parts)
    if opts.part is not None and rows[opts.part].size == 0:
        raise SliceError(f"part {opts.part} of parts={opts.parts} is empty: the grid has only {axes[0].size} "
                         f"alpha values; use parts <= {axes[0].size}")
    alpha = axes[0] if opts.part is None else axes[0][rows[opts.part]]
    shape = (alpha.size,) + tuple(a.size for a in axes[1:])
    coeffs = np.stack(np.meshgrid(alpha, *axes[1:], indexing="ij"), axis=-1).reshape(-1, ndim)

    mods = _stat_modules(model) if opts.bn_mode == "recompute" else []
    n_rec = obj.num_batches if opts.recompute_batches is None else opts.recompute_batches
    if opts.bn_mode == "recompute" and n_rec > obj.num_batches:
        raise SliceError(f"recompute_batches={n_rec} but the data make only {obj.num_batches} batches of "
                         f"batch_size={obj.batch_size}; use recompute_batches <= {obj.num_batches} (or None: all)")
    if opts.autocast is not None:
        from landscape.precision import Precision

        ctx = Precision.make(opts.autocast, obj.device).autocast
    else:
        ctx = contextlib.nullcontext
    evaluator = _Evaluator(obj, D, opts.bn_mode, mods, n_rec, opts.vmap, opts.vmap_chunk)

    zero = np.flatnonzero(~coeffs.any(axis=1))  # the centre, when this part holds it
    with torch.no_grad(), Progress(coeffs.shape[0] + (zero.size == 0), f"slice {'x'.join(map(str, shape))}",
                                   enabled=progress) as bar:
        out = []
        with ctx():
            for start in range(0, coeffs.shape[0], evaluator.chunk):
                block = evaluator(coeffs[start:start + evaluator.chunk])
                out.append(block)
                bar.update(block.shape[0])
            if zero.size:
                centre = out[zero[0] // evaluator.chunk][zero[0] % evaluator.chunk]
            else:
                centre = evaluator(np.zeros((1, ndim)))[0]
                bar.update(1)
        autocast_error = None
        if opts.autocast is not None:
            autocast_error = abs(float(centre[0]) - float(evaluator(np.zeros((1, ndim)))[0][0]))
    values_ = torch.cat(out).cpu().numpy()

    dims = AXES[:ndim]
    units = obj.loss_spec.units
    has_acc = "accuracy" in opts.metrics and obj.class_targets
    labels = list(DIRECTION_LABELS[:ndim])
    d64 = D.to(torch.float64)
    norms = torch.linalg.vector_norm(d64, dim=0).cpu().numpy()
    data_vars: dict[str, Any] = {
        "direction_norm": ("direction", norms, {"long_name": "l2 norm of the direction over the group", "units": "1"}),
        "centre_loss": ((), float(centre[0]), {
            "long_name": f"loss at the centre (alpha = beta = 0), bn_mode={opts.bn_mode}", "units": units}),
    }
    if "loss" in opts.metrics:
        data_vars["loss"] = (dims, values_[:, 0].reshape(shape), {
            "long_name": f"mean loss ({obj.loss_spec.spec}) at theta0 + alpha d1"
                         + (" + beta d2" if ndim == 2 else ""), "units": units})
    if has_acc:
        data_vars["accuracy"] = (dims, (1.0 - values_[:, 1]).reshape(shape), {
            "long_name": "classification accuracy", "units": "1"})
        data_vars["centre_accuracy"] = ((), 1.0 - float(centre[1]), {
            "long_name": "classification accuracy at the centre", "units": "1"})
    if ndim == 2:
        prod = float(norms[0] * norms[1])
        cos = float(d64[:, 0] @ d64[:, 1]) / prod if prod > 0 else float("nan")
        data_vars["cos_d1_d2"] = ((), cos, {"long_name": "cosine between d1 and d2", "units": "1"})
    if opts.bn_mode == "recompute":
        loss_rs, _ = obj.loss_and_error()
        data_vars["centre_loss_running_stats"] = ((), float(loss_rs), {
            "long_name": "loss at the centre with the model's own running statistics (bn_mode=eval)",
            "units": units})
    if autocast_error is not None:
        data_vars["autocast_centre_error"] = ((), autocast_error, {
            "long_name": f"|loss under {opts.autocast} autocast - float32 loss| at the centre", "units": units})
    coords: dict[str, Any] = {
        AXES[k]: (AXES[k], (alpha if k == 0 else axes[k]), {"long_name": f"coefficient of {DIRECTION_LABELS[k]}",
                                                           "units": "1"})
        for k in range(ndim)
    }
    coords["direction"] = ("direction", labels, {"long_name": "direction", "units": "1"})
    if points:
        plabels, pcoords, psteps = _points(points, ndim)
        coords["point_label"] = ("point", plabels, {"long_name": "point on the slice", "units": "1"})
        coords["point_step"] = ("point", psteps, {"long_name": "training step of the point (-1: unknown)",
                                                  "units": "1"})
        for k in range(ndim):
            data_vars[f"point_{AXES[k]}"] = ("point", pcoords[:, k], {
                "long_name": f"{AXES[k]} coordinate of the point", "units": "1"})
    ev = getattr(plane, "explained_variance", None) if plane is not None else None
    if ev is not None:
        data_vars["explained_variance"] = ("direction", np.asarray(ev, dtype=np.float64)[:ndim], {
            "long_name": "fraction of the trajectory's variance along the direction (PCA)", "units": "1"})
    ds = xr.Dataset(data_vars, coords=coords, attrs={
        "ndim": ndim,
        "bn_mode": opts.bn_mode,
        "direction_kind": kind,
        "normalization": normalization or "unknown",
        "one_d": one_d or "unknown",
        "part": -1 if opts.part is None else int(opts.part),
        "parts": int(opts.parts),
        "recompute_batches": int(n_rec) if opts.bn_mode == "recompute" else 0,
        "vmap": int(opts.vmap),
        "autocast": opts.autocast or "",
        "memory_format": fmt,
        "params": str(opts.params),
        "metrics": ",".join(m for m in opts.metrics if m != "accuracy" or has_acc),
    })
    if opts.keep_directions:
        from landscape.directions import directions_to_dataset

        ds = directions_to_dataset(ds, dirs)
    return stamp(ds, "slice", opts, obj)


class _Evaluator:
    """Loss and error rate at rows of coefficients: the loop (one point per forward) or vmap."""

    def __init__(self, obj: Objective, D: Tensor, bn_mode: str, mods, n_rec: int, vmap: bool, chunk: int):
        self.obj, self.D, self.bn_mode, self.mods, self.n_rec, self.vmap = obj, D, bn_mode, mods, n_rec, vmap
        self.chunk = chunk if vmap else 1

    def _buffers(self, theta: Tensor) -> dict[str, Tensor] | None:
        return _recomputed(self.obj, theta, self.mods, self.n_rec) if self.bn_mode == "recompute" else None

    def __call__(self, coeffs: np.ndarray) -> Tensor:
        obj = self.obj
        c = torch.as_tensor(coeffs, dtype=obj.theta0.dtype, device=obj.device)
        if not self.vmap:
            rows = []
            for ci in c:
                theta = torch.addmv(obj.theta0, self.D, ci)  # the one fused op per point
                rows.append(_pack(*obj.loss_and_error(theta, buffers=self._buffers(theta))))
            return torch.stack(rows)
        thetas = torch.addmm(obj.theta0, c, self.D.T)  # (points, P) in one op
        if self.bn_mode == "eval":
            return torch.func.vmap(lambda th: _pack(*obj.loss_and_error(th)))(thetas)
        if self.bn_mode == "recompute":
            per = [self._buffers(th) for th in thetas]
            bufs = {n: torch.stack([b[n] for b in per]) for n in per[0]}
        else:  # batch statistics: train-mode layers write their (batched) throw-away buffers
            bufs = {n: b.expand(thetas.shape[0], *b.shape).clone() for n, b in obj.buffer_copies().items()}
        return torch.func.vmap(lambda th, b: _pack(*obj.loss_and_error(th, buffers=b)))(thetas, bufs)


# ----------------------------------------------------------------------------- parts


def combine_parts(datasets: Sequence[xr.Dataset]) -> xr.Dataset:
    """The full slice from its parts (results of ``part=0..parts-1``, in any order).

    Every part of the same slice must be there exactly once (same options apart from ``part``);
    the result equals an unsplit run's values, with ``attrs["part"] = -1``.

    Example:
        >>> import torch
        >>> m = torch.nn.Linear(2, 2)
        >>> x, y = torch.randn(8, 2), torch.randint(0, 2, (8,))
        >>> d = {"weight": torch.ones(2, 2)}
        >>> ps = [loss_slice(m, (x, y), d, grid=5, part=i, parts=2, progress=False) for i in (1, 0)]
        >>> combine_parts(ps).alpha.values.tolist()
        [-1.0, -0.5, 0.0, 0.5, 1.0]
    """
    parts = list(datasets)
    if not parts:
        raise SliceError("combine_parts got no datasets")

    def config(ds: xr.Dataset) -> dict:
        c = json.loads(ds.attrs.get("config_json", "{}"))
        c.pop("part", None)
        return c

    first = config(parts[0])
    n = parts[0].attrs.get("parts")
    for ds in parts:
        if ds.attrs.get("analysis") != "slice" or "part" not in ds.attrs:
            raise SliceError("combine_parts: every dataset must be a slice result with a 'part' attribute")
        if config(ds) != first:
            raise SliceError("combine_parts: the parts come from different slices (their options differ apart "
                             "from 'part')")
    got = sorted(int(ds.attrs["part"]) for ds in parts)
    if got != list(range(int(n))):
        raise SliceError(f"combine_parts: parts {got} given; a complete slice needs each of 0..{int(n) - 1} once")
    ordered = sorted(parts, key=lambda ds: int(ds.attrs["part"]))
    out = xr.concat(ordered, dim="alpha", data_vars="minimal", coords="minimal", compat="equals",
                    combine_attrs="override")
    first["part"] = None
    for key in ("calls_loss", "calls_grad", "calls_hvp", "calls_logits"):
        if key in out.attrs:
            out.attrs[key] = int(sum(int(ds.attrs.get(key, 0)) for ds in parts))
    out.attrs.update(part=-1, config_json=json.dumps(first, sort_keys=True, default=list))
    return out


# ----------------------------------------------------------------------------- the registered analysis

KINDS = ("random", "momentum", "gradient", "eigenvector")


@dataclass(frozen=True)
class SliceOptions(LossSliceOptions):
    """Options of :func:`slice_analysis`, the registered ``slice`` analysis (same names, same
    defaults): the slice options of :class:`LossSliceOptions` plus how the directions are made.

    ``kind``: ``"random"`` (seeded Gaussian, Li et al.), ``"momentum"`` (the checkpoint's
    optimizer momentum, MSAM Fig. 4), ``"gradient"`` (the data-set gradient) or
    ``"eigenvector"`` (top Hessian eigenvectors by Lanczos, to relative residual
    ``eigen_tol``); ``ndim``: 1 or 2 (2-D: ``d2`` is a seeded random direction for momentum and
    gradient, the second eigenvector for eigenvector); ``normalization`` / ``one_d``: how every
    direction is normalized (:func:`landscape.directions.normalize`; ``"none"`` keeps a raw
    gradient or a unit eigenvector); ``orthogonalize``: Gram-Schmidt ``d2`` against ``d1``
    after normalizing; ``seed``: the random directions.

    Example:
        >>> SliceOptions.from_dict({"kind": "eigenvector", "ndim": 2, "grid": "-0.5:0.5:11"}).ndim
        2
    """

    kind: Literal["random", "momentum", "gradient", "eigenvector"] = "random"
    ndim: Literal[1, 2] = 1
    normalization: Literal["filter", "layer", "model", "none"] = "filter"
    one_d: Literal["ignore", "filter"] = "ignore"
    orthogonalize: bool = False
    seed: int = 0
    eigen_tol: float = 1e-3

    def validate(self) -> None:
        super().validate()
        check(self.eigen_tol > 0, f"SliceOptions.eigen_tol must be > 0, got {self.eigen_tol!r}")
        if _per_axis(self.grid):
            check(len(self.grid) == self.ndim,
                  f"SliceOptions.grid has {len(self.grid)} per-axis specs but ndim={self.ndim}")


def slice_directions(model: nn.Module, data, opts: SliceOptions, momentum=None, objective: Objective | None = None,
                     **objects) -> list[dict[str, Tensor]]:
    """The ``opts.ndim`` directions of ``opts.kind`` at ``model`` (see :class:`SliceOptions`).

    ``momentum``: the buffers by name, or a zero-argument function returning them (called only
    for ``kind="momentum"``); ``objective``: the objective of ``opts`` when the caller has built
    it already (the gradient and eigenvector kinds use it instead of staging the data again);
    ``objects``: objective overrides (a loss callable, ``batch_fn``).
    """
    from landscape import directions as dr

    norm = {"normalization": opts.normalization, "one_d": opts.one_d}

    def random(generator: torch.Generator) -> dict[str, Tensor]:
        return dr.random_direction(model, params=opts.params, generator=generator, **norm)

    gen = torch.Generator().manual_seed(int(opts.seed))
    if opts.kind == "random":
        dirs = [random(gen) for _ in range(opts.ndim)]
    elif opts.kind == "momentum":
        buffers = momentum() if callable(momentum) else momentum
        if not buffers:
            raise SliceError("kind='momentum' needs the optimizer's momentum buffers (Checkpoint.momentum()); "
                             "none were given")
        dirs = [dr.momentum_direction(buffers, model, params=opts.params, **norm)]
    elif opts.kind == "gradient" and objective is None:
        kwargs = {k: v for k, v in opts.objective_kwargs().items() if k != "params"}
        kwargs.update(objects)
        dirs = [dr.gradient_direction(model, data, params=opts.params, **norm, **kwargs)]
    elif opts.kind == "gradient":
        # gradient_direction's computation on the objective at hand (its device; back to the model's).
        chosen = select(model, opts.params)
        grad = objective.unflatten(objective.grad())
        dirs = [dr.normalize({n: t.detach().to(chosen[n].device).clone() for n, t in grad.items()}, model, **norm)]
    else:
        from landscape.analyses.lanczos import lanczos

        obj = objective if objective is not None else Objective.from_options(model, data, opts, **objects)
        if opts.ndim > obj.numel:
            raise SliceError(f"kind='eigenvector' with ndim={opts.ndim} needs a group of at least {opts.ndim} "
                             f"parameters; {opts.params!r} has {obj.numel}")
        eig = lanczos(obj.hvp_operator(method="auto"), obj.numel, k=opts.ndim, tol=opts.eigen_tol, seed=gen,
                      eigenvectors=True, device=obj.device)
        vectors = dr.eigenvector_directions(model, eig.eigenvectors, k=opts.ndim, params=opts.params)
        dirs = [dr.normalize(v, model, **norm) for v in vectors]
    if opts.kind in ("momentum", "gradient") and opts.ndim == 2:
        dirs.append(random(gen))
    if opts.orthogonalize and len(dirs) == 2:
        dirs = list(dr.orthogonalize(dirs[0], dirs[1]))
    return dirs


def slice_analysis(
    model: nn.Module,
    data,
    momentum: Mapping[str, Tensor] | Callable[[], Mapping[str, Tensor]] | None = None,
    *,
    batch_size: int | None = 256,
    max_samples: int | None = None,
    bn_mode: str = "eval",
    loss: str | Callable = "ce",
    logit_normalize: bool = False,
    params: str = "all",
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    micro_batch_size: int | None = None,
    tf32: bool = False,
    batch_fn: str | Callable | None = None,
    output_fn: str | Callable | None = None,
    grid: Any = "-1:1:21",
    metrics: Sequence[str] = ("loss", "accuracy"),
    recompute_batches: int | None = None,
    part: int | None = None,
    parts: int = 1,
    vmap: bool = False,
    vmap_chunk: int = 16,
    autocast: str | None = None,
    memory_format: str = "auto",
    keep_directions: bool = True,
    kind: str = "random",
    ndim: int = 1,
    normalization: str = "filter",
    one_d: str = "ignore",
    orthogonalize: bool = False,
    seed: int = 0,
    eigen_tol: float = 1e-3,
    progress: bool = True,
) -> xr.Dataset:
    """A slice through ``model`` along directions it makes itself: the registered ``slice`` analysis.

    :func:`slice_directions` makes the directions (seeded random, momentum, gradient or top
    Hessian eigenvectors; Li et al. 2018, arXiv 1712.09913; MSAM Fig. 4 for momentum), then
    :func:`loss_slice` evaluates them; the result is :func:`loss_slice`'s, with
    ``attrs["direction_kind"] = kind`` and these options in ``config_json``. In batch runs
    (``landscape analyze -a slice``) ``momentum`` comes from each checkpoint; ``parts > 1``
    becomes one task (and one result file) per part.

    Args:
        model: the network (never modified).
        data: any form of :mod:`landscape.inputs`.
        momentum: momentum buffers by parameter name, or a function returning them (only used
            for ``kind="momentum"``).
        batch_size, max_samples, bn_mode, loss, logit_normalize, params, dtype, device,
            micro_batch_size, tf32, batch_fn, output_fn, grid, metrics, recompute_batches, part,
            parts, vmap, vmap_chunk, autocast, memory_format, keep_directions: as in
            :func:`loss_slice`.
        kind, ndim, normalization, one_d, orthogonalize, seed, eigen_tol: the directions
            (:class:`SliceOptions`).
        progress: progress bar / log lines; ``False``: silent.

    Returns:
        The :func:`loss_slice` Dataset.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).eval()
        >>> x, y = torch.randn(32, 3), torch.randint(0, 2, (32,))
        >>> ds = slice_analysis(m, (x, y), kind="eigenvector", ndim=2, grid=3, normalization="none",
        ...                     one_d="filter", progress=False)  # raw unit eigenvectors
        >>> ds.attrs["direction_kind"], ds.loss.shape, abs(float(ds.cos_d1_d2)) < 1e-4
        ('eigenvector', (3, 3), True)
    """
    opts, objects = make_options(SliceOptions, locals())
    # One objective for the directions and the slice: the data are staged once, and the peak
    # memory (measured from the objective's construction) covers both.
    obj = Objective.from_options(model, data, opts, **objects) if opts.kind in ("gradient", "eigenvector") else None
    dirs = slice_directions(model, data, opts, momentum, objective=obj, **objects)
    slice_opts = LossSliceOptions(**{f: getattr(opts, f) for f in LossSliceOptions.__dataclass_fields__})
    ds = _loss_slice(model, data, dirs, slice_opts, objects, None, opts.kind, opts.normalization, opts.one_d,
                     progress, obj)
    ds.attrs["config_json"] = opts.to_json()
    return ds


def slice_inputs(checkpoint) -> dict[str, Any]:
    """Registry hook: the checkpoint's momentum, read only if ``kind="momentum"`` asks for it
    (a checkpoint without optimizer state still serves the other kinds)."""
    return {"momentum": checkpoint.momentum}
