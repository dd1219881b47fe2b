"""The objective: (model, data, loss options, BatchNorm mode, parameter group) -> L(theta).

Every analysis in landscape needs the same function: the training loss of a network as a
function of one *group* of its parameters, the others held fixed, over a fixed set of batches,
with BatchNorm in a known mode. :class:`Objective` builds it once, through
``torch.func.functional_call``, so the user's model object is never mutated (its parameters,
buffers and ``training`` flags are restored even when an exception is raised) and the result
composes with ``torch.func`` (``grad``, ``jvp``, ``vmap`` of the loss in ``theta``).

Conventions:

* ``theta`` is a flat 1-D tensor over the selected group, in :func:`landscape.params.select`
  order; ``theta=None`` means ``theta0``, the parameters at construction.
* ``batch=None`` means the exact data-set mean ``sum_i (b_i / N) L_i`` (not a mean of batch
  means when batch sizes differ), accumulated in float64; ``batch=i`` means batch ``i`` alone.
* ``bn_mode="eval"`` (default) uses BatchNorm running statistics: the loss is then a sum over
  examples, and the Hessian does not depend on how the data is split into batches.
  ``bn_mode="train"`` normalizes each batch with its own statistics over the fixed partition
  made at construction. That is a *different function* (hence a different Hessian, which also
  depends on ``batch_size``); running statistics are never updated, neither in the model nor
  between calls. Only normalization layers switch mode; dropout is always off.
* ``logit_normalize=True``: logits are centred over classes and divided by their l2 norm
  (floored at 1e-10), as in Andriushchenko et al. (2023) and SAM-ON Appendix B.10.
* Parameters with ``requires_grad=False`` are never in the group: frozen, they are held fixed.

One home per mechanism: data forms and model outputs are :mod:`landscape.inputs`, loss specs
:mod:`landscape.losses`, the HVP methods :mod:`landscape.hvp`; here are the group's flat
vector, the batch loop (:meth:`Objective.accumulate`) and the shared options
(:class:`ObjectiveOptions`, built into an objective by :meth:`Objective.from_options`).

Example:
    >>> import torch
    >>> from landscape.models import build_model
    >>> from landscape.data import get_dataset
    >>> ds = get_dataset("synthetic", num_samples=32, input_shape=(8,), num_classes=3)
    >>> model = build_model("mlp", input_shape=(8,), num_classes=3, width=4, depth=1)
    >>> obj = Objective(model, ds, batch_size=10, params="all")
    >>> obj.batch_sizes
    [10, 10, 10, 2]
    >>> v = torch.randn(obj.numel)
    >>> obj.hvp(v).shape == (obj.numel,)
    True
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

from landscape import hvp as _hvp
from landscape import inputs as _inputs
from landscape.config import Options, check
from landscape.losses import Loss, class_targets, import_object, resolve_loss
from landscape.params import GroupError, GroupSpec, is_norm_module, select

__all__ = ["GroupError", "NonFiniteLossError", "Objective", "ObjectiveOptions"]

BN_MODES = ("eval", "train")
LOSSES = ("ce", "mse")
HVP_METHODS = _hvp.METHODS
DTYPES = {"float64": torch.float64, "double": torch.float64, "float32": torch.float32,
          "float": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Logit-normalization floor (Andriushchenko et al. 2023 code: max(||z||, 1e-10)).
LOGIT_NORM_FLOOR = 1e-10


class NonFiniteLossError(ValueError):
    """The loss is NaN or infinite at the point where an analysis starts."""


def _as_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.replace("torch.", "") in DTYPES:
        return DTYPES[dtype.replace("torch.", "")]
    raise ValueError(f"dtype={dtype!r} is not accepted; accepted: None, a torch float dtype, or one of {', '.join(DTYPES)}")


def dtype_name(dtype) -> str | None:
    """The JSON-plain name of a dtype option: ``torch.float64`` or ``"double"`` -> ``"float64"``."""
    d = _as_dtype(dtype)
    return None if d is None else str(d).replace("torch.", "")


def _callable(spec, what: str):
    if spec is None or callable(spec):
        return spec
    if isinstance(spec, str):
        return import_object(spec, what)
    raise ValueError(f"{what}={spec!r} is not accepted; accepted: None, a callable or an import path 'package.module:attr'")


@dataclass(frozen=True)
class ObjectiveOptions(Options):
    """The objective options every data-using analysis shares (same names, same meaning).

    ``batch_size``: examples per fixed batch (``None``: one batch); ``max_samples``: the first
    ``max_samples`` examples (``None``: all); ``bn_mode``: "eval" (running statistics) or
    "train" (batch statistics over the fixed partition); ``loss``: "ce", "mse" or an import
    path ``"package.module:attr"`` (a callable or ``nn.Module`` passed to an analysis function
    is recorded here as its import path and arguments, see :func:`landscape.losses.describe`);
    ``logit_normalize``: centre and l2-normalize the outputs before the loss; ``params``: the
    parameter group (:mod:`landscape.params`); ``dtype``: ``None`` (the model's), "float32" or
    "float64" (a ``torch.dtype`` given to an analysis function is stored by name);
    ``batch_fn`` / ``output_fn``: ``None`` or import paths of the data / output adapters of
    :mod:`landscape.inputs` (callables given to a function are recorded by import path).

    Example:
        >>> ObjectiveOptions(max_samples=512).required_samples()
        512
    """

    batch_size: int | None = 256
    max_samples: int | None = None
    bn_mode: Literal["eval", "train"] = "eval"
    loss: str = "ce"
    logit_normalize: bool = False
    params: str = "all"
    dtype: str | None = None
    batch_fn: str | None = None
    output_fn: str | None = None

    def validate(self) -> None:
        name = type(self).__name__
        pos = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1  # noqa: E731
        check(self.batch_size is None or pos(self.batch_size),
              f"{name}.batch_size must be None or a positive int, got {self.batch_size!r}")
        check(self.max_samples is None or pos(self.max_samples),
              f"{name}.max_samples must be None or a positive int, got {self.max_samples!r}")
        check(isinstance(self.loss, str) and (self.loss in LOSSES or ":" in self.loss),
              f"{name}.loss={self.loss!r} is not accepted; accepted: 'ce', 'mse' or an import path "
              "'package.module:attr' (analysis functions also take the callable itself)")
        check(isinstance(self.params, str) and bool(self.params),
              f"{name}.params must be a parameter-group spec string, got {self.params!r}")
        check(self.dtype in (None, "float32", "float64"),
              f"{name}.dtype={self.dtype!r} is not accepted; accepted: None, 'float32', 'float64'")
        for field in ("batch_fn", "output_fn"):
            v = getattr(self, field)
            check(v is None or (isinstance(v, str) and ":" in v),
                  f"{name}.{field}={v!r} is not accepted; accepted: None or an import path 'package.module:attr'")

    def objective_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :class:`Objective` these options stand for."""
        return {k: getattr(self, k) for k in OBJECTIVE_FIELDS}

    def required_samples(self) -> int | None:
        """Examples the analysis needs from the data (``None``: whatever there is); the batch
        runner compares it with ``data.n`` before any task starts."""
        return self.max_samples


OBJECTIVE_FIELDS = ("batch_size", "max_samples", "bn_mode", "loss", "logit_normalize", "params", "dtype",
                    "batch_fn", "output_fn")


@contextlib.contextmanager
def _modes(model: nn.Module, bn_train: bool) -> Iterator[None]:
    """Set normalization layers to train/eval and everything else to eval; restore afterwards."""
    saved = [(m, m.training) for m in model.modules()]
    try:
        for m in model.modules():
            # Only normalization layers follow bn_mode: dropout must stay off in both modes,
            # or the objective would be random.
            m.training = bn_train and is_norm_module(m)
        yield
    finally:
        for m, flag in saved:
            m.training = flag


class Objective:
    """The loss of ``model`` on a fixed data set as a function of one parameter group.

    Args:
        model: the network; never mutated. Its device decides where everything runs.
        data: any form of :mod:`landscape.inputs` (an ``ArrayDataset``, a ``TensorDataset`` or
            other map-style ``Dataset``, a ``DataLoader``, an ``(x, y)`` tuple, an iterable of
            tuple or dict batches). No augmentation is applied. The batches are built once,
            here, on the model's device.
        batch_size: examples per batch (the last batch may be smaller). The first ``max_samples``
            examples are split in order, once, at construction. ``None``: one batch.
        max_samples: use only the first ``max_samples`` examples (``None``: all).
        params: a parameter-group spec of :mod:`landscape.params` ("all", "norm", "B3",
            "glob:fc.*", ...). The others stay fixed at their values at construction.
            Parameters with ``requires_grad=False`` (frozen) are never in the group: they are
            held fixed like the parameters outside it. An empty group raises :class:`GroupError`.
        bn_mode: "eval" (running statistics; default) or "train" (batch statistics on the fixed
            partition; a different, partition-dependent function). See the module docstring.
        logit_normalize: centre the outputs and divide by their l2 norm (SAM-ON Appendix B.10).
        loss: "ce" (cross-entropy), "mse" (``F.mse_loss`` against one-hot class targets, i.e.
            the mean over examples *and* classes, or against float targets), an import path,
            or a callable ``(output, target) -> scalar mean`` (an ``nn.Module`` such as
            ``nn.CrossEntropyLoss(label_smoothing=0.1)`` included); see :mod:`landscape.losses`.
        dtype: cast copies of parameters, buffers and float inputs and targets to this dtype (e.g.
            ``torch.float64`` for exact reference computations). ``None``: keep the model's.
        batch_fn: ``batch -> (inputs, targets)`` for batches of any other form (or its import path).
        output_fn: ``model output -> tensor`` for outputs of any other form (or its import path).

    Attributes:
        names, shapes, numel: the selected group (names in ``select`` order), its shapes and its
            dimension P.
        theta0: flat detached copy of the selected parameters at construction.
        num_batches, batch_sizes, num_samples: the fixed batch partition.
        loss_spec: the resolved :class:`~landscape.losses.Loss` (``.spec``, ``.units``).
        calls: a ``Counter`` of evaluations by kind ("loss", "grad", "hvp", "logits"), one count
            per batch forward, so analyses can report their cost.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
        >>> x, y = torch.randn(20, 3), torch.randint(0, 2, (20,))
        >>> obj = Objective(m, (x, y), batch_size=8, params="norm")
        >>> obj.names, obj.numel
        (['1.weight', '1.bias'], 8)
        >>> g = obj.grad()
        >>> torch.allclose(obj.hvp(g), obj.hvp(g, method="double-backward"))
        True
    """

    def __init__(
        self,
        model: nn.Module,
        data,
        *,
        batch_size: int | None = 256,
        max_samples: int | None = None,
        params: GroupSpec = "all",
        bn_mode: str = "eval",
        logit_normalize: bool = False,
        loss: str | Callable[[Tensor, Tensor], Tensor] | Loss = "ce",
        dtype=None,
        batch_fn: Callable[[Any], Any] | str | None = None,
        output_fn: Callable[[Any], Tensor] | str | None = None,
    ) -> None:
        if bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode={bn_mode!r} is not accepted; accepted: {', '.join(BN_MODES)}")
        self.loss_spec: Loss = resolve_loss(loss)
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
        if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1):
            raise ValueError(f"max_samples must be a positive int or None, got {max_samples!r}")
        self.model = model
        self.bn_mode = bn_mode
        self.logit_normalize = bool(logit_normalize)
        self.loss_name = self.loss_spec.spec
        self.dtype = _as_dtype(dtype)
        self.batch_fn = _callable(batch_fn, "batch_fn")
        self.output_fn = _callable(output_fn, "output_fn")
        self.calls: Counter = Counter()

        chosen = select(model, params)  # raises GroupError when empty
        self.names: list[str] = list(chosen)
        self.shapes: list[torch.Size] = [p.shape for p in chosen.values()]
        self._numels = [p.numel() for p in chosen.values()]
        self.numel: int = sum(self._numels)

        first = next(iter(chosen.values()))
        self.device = first.device

        def copy(t: Tensor) -> Tensor:
            t = t.detach()
            if self.dtype is not None and t.is_floating_point():
                return t.to(self.dtype, copy=True)
            return t.clone()

        # Copies: later changes to the model do not change the objective, and BatchNorm in train
        # mode can never move the model's running statistics.
        self._fixed: dict[str, Tensor] = {
            n: copy(p) for n, p in model.named_parameters() if n not in chosen
        }
        self._buffers: dict[str, Tensor] = {n: copy(b) for n, b in model.named_buffers()}
        sel = [copy(p) for p in chosen.values()]
        self._param_dtypes = [t.dtype for t in sel]
        dtypes = {t.dtype for t in sel}
        flat_dtype = sel[0].dtype if len(dtypes) == 1 else torch.float64
        self.theta0: Tensor = torch.cat([t.reshape(-1).to(flat_dtype) for t in sel])

        # Staged once: every batch lives on the model's device in the objective's dtype.
        x, y = _inputs.collect(data, max_samples, self.batch_fn)
        x = _inputs.to_device(x, self.device, self.dtype)
        y = _inputs.to_device(y, self.device, self.dtype)
        n = int(y.shape[0])
        self._batches: list[tuple[_inputs.Inputs, Tensor]] = _inputs.split(x, y, batch_size)
        self.batch_sizes: list[int] = [int(b[1].shape[0]) for b in self._batches]
        self.num_batches: int = len(self._batches)
        self.num_samples: int = n
        self.batch_size = n if batch_size is None else batch_size

    @classmethod
    def from_options(cls, model: nn.Module, data, options: ObjectiveOptions, **overrides) -> Objective:
        """The objective an analysis' options stand for (``options.objective_kwargs()``), with
        ``overrides`` (e.g. ``loss=nn.CrossEntropyLoss(label_smoothing=0.1)``, ``batch_fn=fn``)
        replacing individual fields (``batch_size=None`` means one batch, as in the options).

        Example:
            >>> import torch
            >>> opts = ObjectiveOptions(batch_size=4, loss="mse")
            >>> obj = Objective.from_options(torch.nn.Linear(2, 3), (torch.randn(6, 2), torch.arange(6) % 3), opts)
            >>> obj.batch_sizes, obj.loss_spec.units
            ([4, 2], '1')
        """
        kwargs = options.objective_kwargs()
        unknown = sorted(set(overrides) - set(kwargs))
        if unknown:
            raise TypeError(f"Objective.from_options: unknown override(s) {unknown}; accepted: {', '.join(kwargs)}")
        kwargs.update(overrides)
        return cls(model, data, **kwargs)

    def with_params(self, params: GroupSpec) -> Objective:
        """The same objective as a function of another parameter group, without restaging.

        The staged batches, loss, modes, device, dtype, buffers and the :attr:`calls` counter are
        shared with ``self`` (nothing is copied but the new group's flat ``theta0``); every
        parameter outside the new group is held at this objective's values (``theta0`` for this
        group's, the fixed copies for the others). Per-group analyses use it to build one
        objective per block from one staging of the data.

        Example:
            >>> import torch
            >>> from torch import nn
            >>> obj = Objective(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)), (torch.randn(6, 3), torch.arange(6) % 2))
            >>> head = obj.with_params("glob:1.*")
            >>> head.names, head.numel, head.batches()[0][0] is obj.batches()[0][0]
            (['1.weight', '1.bias'], 10, True)
        """
        state = dict(self._fixed)
        state.update(self.unflatten(self.theta0))
        chosen = select(self.model, params)  # raises GroupError when empty
        new = copy.copy(self)
        sel = [state[n] for n in chosen]
        new.names = list(chosen)
        new.shapes = [t.shape for t in sel]
        new._numels = [t.numel() for t in sel]
        new.numel = sum(new._numels)
        new._fixed = {n: t for n, t in state.items() if n not in chosen}
        new._param_dtypes = [t.dtype for t in sel]
        dtypes = {t.dtype for t in sel}
        flat_dtype = sel[0].dtype if len(dtypes) == 1 else torch.float64
        new.theta0 = torch.cat([t.detach().reshape(-1).to(flat_dtype) for t in sel])
        return new

    # ------------------------------------------------------------------ flat <-> named
    def flatten(self, tensors: dict[str, Tensor] | Sequence[Tensor]) -> Tensor:
        """Concatenate tensors of the group (a ``{name: tensor}`` dict or a sequence in ``names``
        order) into one flat vector of ``theta0``'s dtype."""
        if isinstance(tensors, dict):
            missing = [n for n in self.names if n not in tensors]
            if missing:
                raise KeyError(f"flatten: no tensor for parameter {missing[0]!r} of the group")
            seq = [tensors[n] for n in self.names]
        else:
            seq = list(tensors)
            if len(seq) != len(self.names):
                raise ValueError(f"flatten: expected {len(self.names)} tensors, got {len(seq)}")
        for name, t, shape in zip(self.names, seq, self.shapes):
            if t.shape != shape:
                raise ValueError(f"flatten: {name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
        return torch.cat([t.reshape(-1).to(self.theta0.dtype) for t in seq])

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Split a flat vector into ``{name: tensor}`` with the group's shapes (views)."""
        self.check_flat(flat, "theta")
        return {
            n: (t.view(s) if t.dtype == d else t.view(s).to(d))
            for n, t, s, d in zip(self.names, flat.split(self._numels), self.shapes, self._param_dtypes)
        }

    def check_flat(self, flat: Tensor, what: str) -> None:
        """Raise ``ValueError`` unless ``flat`` is a 1-D vector of the group's dimension."""
        if flat.ndim != 1 or flat.shape[0] != self.numel:
            raise ValueError(
                f"{what} must be a flat vector of length {self.numel} (the group's dimension), "
                f"got shape {tuple(flat.shape)}"
            )

    def point(self, theta: Tensor | None) -> Tensor:
        """``theta`` checked and on the objective's device (``None``: ``theta0``)."""
        if theta is None:
            return self.theta0
        self.check_flat(theta, "theta")
        if theta.device != self.device:
            theta = theta.to(self.device)
        return theta

    def batch_ids(self, batch: int | None) -> list[int]:
        """The batches ``batch`` stands for: all (``None``) or one (negative indices allowed)."""
        if batch is None:
            return list(range(self.num_batches))
        if not isinstance(batch, int) or not -self.num_batches <= batch < self.num_batches:
            raise IndexError(f"batch={batch!r} is out of range: there are {self.num_batches} batches")
        return [batch % self.num_batches]

    def accumulate(self, fn: Callable[[int], Tensor], batch: int | None = None, kind: str | None = None) -> Tensor:
        """``sum_i w_i fn(i)`` in float64 over the batches of ``batch``, the one batch loop.

        ``w_i = b_i / N`` for the data-set mean (``batch=None``: the exact mean over examples of
        a mean-reduced loss, whatever the batch sizes), ``1`` for a single batch. ``kind``
        counts one evaluation per batch in :attr:`calls`. Differentiable through ``fn``.
        """
        total = None
        for i in self.batch_ids(batch):
            w = 1.0 if batch is not None else self.batch_sizes[i] / self.num_samples
            value = fn(i).to(torch.float64) * w
            total = value if total is None else total + value
            if kind is not None:
                self.calls[kind] += 1
        return total

    # ------------------------------------------------------------------ the function
    def _state(self, theta: Tensor, buffers: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        state = dict(self._fixed)
        state.update(self.unflatten(theta))
        if buffers is not None:
            # Caller-owned buffers (e.g. BatchNorm statistics re-estimated at theta); layers in
            # train mode update these in place, never the objective's own.
            state.update(buffers)
        elif self.bn_mode == "train":
            # Train-mode BatchNorm writes running statistics in place; give it throw-away
            # copies so the objective stays the same function between calls.
            state.update({n: b.clone() for n, b in self._buffers.items()})
        else:
            state.update(self._buffers)
        return state

    def _forward(self, theta: Tensor, i: int, buffers: dict[str, Tensor] | None = None,
                 bn_train: bool | None = None) -> Tensor:
        args, kwargs = _inputs.as_call(self._batches[i][0])
        with _modes(self.model, self.bn_mode == "train" if bn_train is None else bn_train):
            out = functional_call(self.model, self._state(theta, buffers), args, kwargs)
        z = _inputs.model_output(out, self.output_fn)
        if self.logit_normalize:
            z = z - z.mean(dim=-1, keepdim=True)
            z = z / z.norm(dim=-1, keepdim=True).clamp_min(LOGIT_NORM_FLOOR)
        return z

    def forward(self, theta: Tensor, i: int, *, buffers: dict[str, Tensor] | None = None,
                bn_train: bool | None = None) -> Tensor:
        """Outputs of batch ``i`` at ``theta`` (after logit normalization if enabled).

        ``buffers``: a full ``{name: tensor}`` set of buffers used instead of the objective's
        (normalization layers in train mode update them in place: pass copies you own);
        ``bn_train``: normalization layers in train (batch statistics) or eval mode instead of
        ``bn_mode``'s. Both ``None``: the objective's own function.
        """
        self.batch_ids(i)
        return self._forward(theta, i, buffers, bn_train)

    def buffer_copies(self) -> dict[str, Tensor]:
        """Fresh copies of the model's buffers as the objective holds them (device, ``dtype``),
        for :meth:`forward` / :meth:`loss_and_error` with ``buffers=``."""
        return {n: b.clone() for n, b in self._buffers.items()}

    def batch_loss(self, theta: Tensor, i: int) -> Tensor:
        """Mean loss of batch ``i`` at ``theta`` (the loss callable's value; model dtype)."""
        return self.loss_spec(self._forward(theta, i), self._batches[i][1])

    def batch_loss_fn(self, i: int) -> Callable[[Tensor], Tensor]:
        """``theta -> mean loss of batch i`` as a pure function (for ``torch.func`` transforms)."""
        self.batch_ids(i)
        return lambda theta: self.batch_loss(theta, i)

    # ------------------------------------------------------------------ public evaluations
    def loss(self, theta: Tensor | None = None, batch: int | None = None) -> Tensor:
        """Mean loss (float64 scalar): over the data set (``batch=None``) or one batch.

        Differentiable in ``theta`` when ``theta`` requires grad (or under ``torch.func``).
        """
        theta = self.point(theta)
        return self.accumulate(lambda i: self.batch_loss(theta, i), batch, "loss")

    def loss_and_grad(self, theta: Tensor | None = None, batch: int | None = None) -> tuple[Tensor, Tensor]:
        """Mean loss (float64 scalar) and its gradient (``theta0``'s dtype); one forward and one
        backward per batch, accumulated in float64.

        Plain reverse mode on a leaf copy of ``theta``: the same function as
        ``torch.func.grad_and_value`` and 22-47 % cheaper per call on CPU conv nets (measured
        for the sharpness analysis on ResNet-20).
        """
        theta = self.point(theta).detach()

        def one(i: int) -> Tensor:
            t = theta.clone().requires_grad_(True)
            with torch.enable_grad():
                li = self.batch_loss(t, i)
                # A loss that does not depend on the group at all has no graph: zero gradient.
                gi = torch.autograd.grad(li, t, allow_unused=True)[0] if li.requires_grad else None
            gi = torch.zeros_like(t) if gi is None else gi
            return torch.cat([li.detach().reshape(1).to(torch.float64), gi.detach().to(torch.float64)])

        out = self.accumulate(one, batch, "grad")
        return out[0], out[1:].to(theta.dtype)

    def grad(self, theta: Tensor | None = None, batch: int | None = None) -> Tensor:
        """Gradient of :meth:`loss` in ``theta`` (``theta0``'s dtype)."""
        return self.loss_and_grad(theta, batch)[1]

    def hvp(
        self, v: Tensor, theta: Tensor | None = None, batch: int | None = None, *, method: str = "jvp"
    ) -> Tensor:
        """Hessian-vector product ``H(theta) v`` recomputed per call: "jvp" (forward-over-reverse,
        default) or "double-backward"; see :mod:`landscape.hvp` (and :meth:`hvp_operator` for
        "linearize" and "retained-graph")."""
        return _hvp.hvp(self, v, theta, batch, method=method)

    def resolve_hvp_method(self, method: str = "auto", batch: int | None = None) -> str:
        """The concrete HVP method for ``method`` (see :func:`landscape.hvp.resolve_method`)."""
        return _hvp.resolve_method(self, method, batch)

    def hvp_operator(
        self, theta: Tensor | None = None, batch: int | None = None, *, method: str = "jvp"
    ) -> Callable[[Tensor], Tensor]:
        """A matvec ``v -> H(theta) v`` at a fixed point, for Lanczos and trace estimators, by
        one of the methods of :mod:`landscape.hvp` ("jvp", "double-backward", "retained-graph",
        "linearize", "auto"); its products are counted in ``self.calls["hvp"]``."""
        return _hvp.operator(self, theta, batch, method=method)

    @torch.no_grad()
    def logits(self, theta: Tensor | None = None, batch: int | None = None) -> Tensor:
        """Model outputs (after logit normalization if enabled): ``(N, C)`` or one batch's."""
        theta = self.point(theta)
        outs = []
        for i in self.batch_ids(batch):
            outs.append(self._forward(theta, i))
            self.calls["logits"] += 1
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    @property
    def class_targets(self) -> bool:
        """Whether the targets are class indices (integer), so a classification error exists."""
        return not self._batches[0][1].is_floating_point() and self._batches[0][1].dtype != torch.bool

    def _wrong(self, z: Tensor, i: int) -> Tensor:
        y = self._batches[i][1]
        if not class_targets(z, y):
            raise ValueError(
                f"classification error needs class-index targets (integer, shape output.shape[:-1]); got targets "
                f"{y.dtype} {tuple(y.shape)} for outputs {tuple(z.shape)}"
            )
        return (z.argmax(dim=-1) != y).sum().to(torch.float64)

    @torch.no_grad()
    def error(self, theta: Tensor | None = None, batch: int | None = None) -> Tensor:
        """Misclassification rate (float64 scalar) over the data set or one batch (class-index
        targets only; ``ValueError`` otherwise)."""
        theta = self.point(theta)
        # Per-batch rates weighted by b_i / N: the rate over all examples.
        return self.accumulate(lambda i: self._wrong(self._forward(theta, i), i) / self.batch_sizes[i], batch, "logits")

    @torch.no_grad()
    def loss_and_error(self, theta: Tensor | None = None, batch: int | None = None, *,
                       buffers: dict[str, Tensor] | None = None) -> tuple[Tensor, Tensor | None]:
        """Mean loss and misclassification rate (float64 scalars) from one forward per batch;
        the error is ``None`` when the targets are not class indices. ``buffers``: evaluate
        with these buffers instead of the model's (as in :meth:`forward`)."""
        theta = self.point(theta)
        errors = self.class_targets

        def one(i: int) -> Tensor:
            z = self._forward(theta, i, buffers)
            li = self.loss_spec(z, self._batches[i][1]).reshape(1).to(torch.float64)
            if not errors:
                return li
            rate = self._wrong(z, i) / self.batch_sizes[i]
            return torch.cat([li, rate.reshape(1)])

        out = self.accumulate(one, batch, "loss")
        return out[0], (out[1] if errors else None)

    def batches(self) -> list[tuple[_inputs.Inputs, Tensor]]:
        """The fixed ``(inputs, targets)`` batches (on the model's device, cast to ``dtype`` if given)."""
        return list(self._batches)

    def channels_last(self) -> bool:
        """Restage 4-D floating-point inputs in ``torch.channels_last`` memory format, in place.

        The values (and so the function) are unchanged; convolutions on CPU (oneDNN) and on
        tensor-core GPUs run faster on NHWC inputs (measured: a ResNet-20 forward 1.2-1.3x on a
        2-core CPU). Returns whether any input was restaged (``False`` for other inputs).
        """
        changed = False

        def restage(t: Tensor) -> Tensor:
            nonlocal changed
            if t.ndim == 4 and t.is_floating_point():
                changed = True
                return t.contiguous(memory_format=torch.channels_last)
            return t

        self._batches = [(_inputs.map_tensors(x, restage), y) for x, y in self._batches]
        return changed

    def check_finite(self, theta: Tensor | None = None) -> float:
        """The data-set loss at ``theta`` as a float; raises :class:`NonFiniteLossError` if it is
        NaN or infinite (analyses call this before they start)."""
        with torch.no_grad():
            value = float(self.loss(theta))
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"the loss at the {'checkpoint' if theta is None else 'given point'} is {value} "
                f"(group {len(self.names)} tensors, {self.numel} parameters, {self.num_samples} "
                "examples): check the checkpoint, the data (NaN/inf inputs) and the labels"
            )
        return value

    def __repr__(self) -> str:
        return (
            f"Objective({type(self.model).__name__}, P={self.numel}, N={self.num_samples}, "
            f"batches={self.batch_sizes[0]}x{self.num_batches}, bn_mode={self.bn_mode!r}, "
            f"loss={self.loss_name!r}, logit_normalize={self.logit_normalize})"
        )
