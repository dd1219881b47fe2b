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
import math
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

from landscape import hvp as _hvp
from landscape import inputs as _inputs
from landscape.config import ConfigError, Options, check, check_device, resolve_device
from landscape.losses import Loss, class_targets, import_object, resolve_loss
from landscape.memory import PeakMemory
from landscape.params import GroupError, GroupSpec, is_norm_module, select
from landscape.precision import tf32_matmuls

__all__ = ["GroupError", "NonFiniteLossError", "Objective", "ObjectiveOptions", "analysis_device", "device_name",
           "model_device"]

BN_MODES = ("eval", "train")
LOSSES = ("ce", "mse")
HVP_METHODS = _hvp.METHODS
DTYPES = {"float64": torch.float64, "double": torch.float64, "float32": torch.float32,
          "float": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Logit-normalization floor (Andriushchenko et al. 2023 code: max(||z||, 1e-10)).
LOGIT_NORM_FLOOR = 1e-10
# A model in one of these dtypes is analysed in float32 unless ``dtype`` says otherwise:
# Lanczos, Auto-PGD and float64 accumulation need more than 8 (bf16) or 11 (fp16) mantissa bits.
HALF_DTYPES = (torch.float16, torch.bfloat16)
DEVICES_ACCEPTED = "None (the model's device), 'cpu', 'cuda', 'cuda:N', 'auto' (CUDA when present) or a torch.device"


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


def device_name(device) -> str | None:
    """The JSON-plain name of a device option: ``torch.device("cuda", 1)`` -> ``"cuda:1"``."""
    return str(device) if isinstance(device, torch.device) else device


def model_device(model: nn.Module) -> torch.device:
    """Where ``model`` lives: its first parameter's (else buffer's) device; CPU for neither."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def analysis_device(device, model: nn.Module | None = None, where: str = "device") -> torch.device:
    """The device an analysis computes on: ``device`` (a name or a ``torch.device``), or, for
    ``None``, the model's (:func:`model_device`).

    Raises:
        ConfigError: an unknown name, CUDA asked for where there is none, or a CUDA index
            beyond the devices present (the message names ``where`` and lists what is accepted).

    Example:
        >>> analysis_device("cpu"), analysis_device(None, torch.nn.Linear(2, 2))
        (device(type='cpu'), device(type='cpu'))
    """
    if device is None:
        return model_device(model) if model is not None else torch.device("cpu")
    name = device_name(device)
    if not isinstance(name, str):
        raise ConfigError(f"{where}={device!r} is not accepted; accepted: {DEVICES_ACCEPTED}")
    try:
        check_device(name, where)
    except ConfigError:
        raise ConfigError(f"{where}={name!r} is not accepted; accepted: {DEVICES_ACCEPTED}") from None
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"{where}={name!r}: CUDA is not available here (torch {torch.__version__}, torch.cuda.is_available() "
            f"is False); accepted on this machine: None (the model's device), 'cpu' or 'auto' (CUDA when present)"
        )
    try:
        dev = resolve_device(name)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    # "cuda" -> "cuda:0" (the current device): the name results record, as parameters report it.
    return torch.device("cuda", torch.cuda.current_device()) if dev.type == "cuda" and dev.index is None else dev


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
    parameter group (:mod:`landscape.params`); ``dtype``: ``None`` (the model's; float32 for a
    float16/bfloat16 model), "float32" or "float64" (a ``torch.dtype`` given to an analysis
    function is stored by name); ``device``: ``None`` (the model's device), "cpu", "cuda",
    "cuda:N" or "auto" (a ``torch.device`` is stored by name; CUDA's presence is checked when the
    analysis runs, so options can be written on a machine without one); ``micro_batch_size``:
    ``None`` (each batch in one piece) or examples per piece: every batch is evaluated in pieces
    of at most that many examples and combined with exact weights (same function, less memory;
    not with ``bn_mode="train"``, whose batch statistics would change); ``tf32``: allow TF32
    float32 matmuls/convolutions on CUDA (default off, see :mod:`landscape.precision`);
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
    device: str | None = None
    micro_batch_size: int | None = None
    tf32: bool = False
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
        check(self.device is None or isinstance(self.device, str),
              f"{name}.device={self.device!r} is not accepted; accepted: {DEVICES_ACCEPTED}")
        if self.device is not None:
            check_device(self.device, f"{name}.device")
        check(self.micro_batch_size is None or pos(self.micro_batch_size),
              f"{name}.micro_batch_size must be None or a positive int, got {self.micro_batch_size!r}")
        check(isinstance(self.tf32, bool), f"{name}.tf32 must be True or False, got {self.tf32!r}")
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
                    "device", "micro_batch_size", "tf32", "batch_fn", "output_fn")


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
        model: the network; never mutated (and never moved: see ``device``).
        data: any form of :mod:`landscape.inputs` (an ``ArrayDataset``, a ``TensorDataset`` or
            other map-style ``Dataset``, a ``DataLoader``, an ``(x, y)`` tuple, an iterable of
            tuple or dict batches). No augmentation is applied. The batches are built once,
            here, on the objective's device.
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
            ``torch.float64`` for exact reference computations). ``None``: keep the model's, except
            that a float16/bfloat16 model is evaluated in float32 (:data:`HALF_DTYPES`).
        device: where everything runs: ``None`` (the device of the group's first parameter),
            "cpu", "cuda", "cuda:N", "auto" or a ``torch.device``. The objective already holds
            its own copies of every parameter and buffer (for ``functional_call``), so they are
            simply made on this device: a model elsewhere costs no extra copy, and the model
            object is untouched. (Tensors a module keeps as plain attributes, neither parameter
            nor buffer, are not seen by ``functional_call`` and stay where they are.)
        micro_batch_size: ``None`` or examples per piece: each fixed batch is evaluated in pieces
            of at most this many examples (the last smaller) and combined with the weights
            ``m_j / b_i`` -- the same function (exact for mean-reduced losses), in the memory
            of one piece. With ``bn_mode="train"`` a piece smaller than its batch is refused
            (batch statistics would change the function). Counts in :attr:`calls` stay per batch.
        tf32: allow TF32 float32 matmuls and cuDNN convolutions on CUDA while the objective
            computes (default ``False``: full float32, torch's own settings restored after
            every evaluation; no effect on the CPU).
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
        device, dtype: where and in which dtype it computes (``dtype`` ``None``: the model's).
        micro_batch_sizes: the pieces of each batch (``[[b_0], [b_1], ...]`` without micro-batches).
        memory: the :class:`~landscape.memory.PeakMemory` meter started at construction (the
            analysis' start), read by :func:`landscape.analyses.common.stamp`.

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
        device: str | torch.device | None = None,
        micro_batch_size: int | None = None,
        tf32: bool = False,
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
        if micro_batch_size is not None and (isinstance(micro_batch_size, bool) or not isinstance(micro_batch_size, int)
                                             or micro_batch_size < 1):
            raise ValueError(f"micro_batch_size must be a positive int or None, got {micro_batch_size!r}")
        self.model = model
        self.bn_mode = bn_mode
        self.logit_normalize = bool(logit_normalize)
        self.loss_name = self.loss_spec.spec
        self.dtype = _as_dtype(dtype)
        if self.dtype is None and any(p.dtype in HALF_DTYPES for p in model.parameters()):
            self.dtype = torch.float32
        self.tf32 = bool(tf32)
        self.batch_fn = _callable(batch_fn, "batch_fn")
        self.output_fn = _callable(output_fn, "output_fn")
        self.calls: Counter = Counter()

        chosen = select(model, params)  # raises GroupError when empty
        self.names: list[str] = list(chosen)
        self.shapes: list[torch.Size] = [p.shape for p in chosen.values()]
        self._numels = [p.numel() for p in chosen.values()]
        self.numel: int = sum(self._numels)

        first = next(iter(chosen.values()))
        self.device = first.device if device is None else analysis_device(device, model)
        # Started before the copies and the data are staged: they are part of the analysis' memory.
        self.memory = PeakMemory(self.device)

        def copy(t: Tensor) -> Tensor:
            t = t.detach()
            if self.dtype is not None and t.is_floating_point():
                return t.to(device=self.device, dtype=self.dtype, copy=True)
            return t.to(self.device, copy=True)

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

        # Staged once: every batch lives on the objective's device in its dtype.
        x, y = _inputs.collect(data, max_samples, self.batch_fn)
        x = _inputs.to_device(x, self.device, self.dtype)
        y = _inputs.to_device(y, self.device, self.dtype)
        n = int(y.shape[0])
        self._batches: list[tuple[_inputs.Inputs, Tensor]] = _inputs.split(x, y, batch_size)
        self.batch_sizes: list[int] = [int(b[1].shape[0]) for b in self._batches]
        self.num_batches: int = len(self._batches)
        self.num_samples: int = n
        self.batch_size = n if batch_size is None else batch_size
        self.micro_batch_size = micro_batch_size
        if bn_mode == "train" and micro_batch_size is not None and micro_batch_size < max(self.batch_sizes):
            raise ValueError(
                f"micro_batch_size={micro_batch_size} with bn_mode='train' is not accepted: BatchNorm would "
                f"normalize each piece by its own statistics, a different function from batches of "
                f"{self.batch_size}; accepted: micro_batch_size=None or >= batch_size, or bn_mode='eval'"
            )
        self._split_micro()

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

    def _split_micro(self) -> None:
        """The pieces of every batch (views of its tensors: no copy) for ``micro_batch_size``."""
        mb = self.micro_batch_size
        self._micro: list[list[tuple[_inputs.Inputs, Tensor]]] = [
            [(x, y)] if mb is None or mb >= int(y.shape[0]) else _inputs.split(x, y, mb) for x, y in self._batches
        ]
        self.micro_batch_sizes: list[list[int]] = [[int(p[1].shape[0]) for p in parts] for parts in self._micro]

    def accumulate(self, fn: Callable[..., Tensor], batch: int | None = None, kind: str | None = None, *,
                   micro: bool = False, split_on_oom: bool = False) -> Tensor:
        """``sum_i w_i fn(i)`` in float64 over the batches of ``batch``, the one batch loop.

        ``w_i = b_i / N`` for the data-set mean (``batch=None``: the exact mean over examples of
        a mean-reduced loss, whatever the batch sizes), ``1`` for a single batch. ``kind``
        counts one evaluation per batch in :attr:`calls`. Differentiable through ``fn``.
        ``micro=True``: ``fn(i, j)`` is the mean over piece ``j`` of batch ``i`` (see
        ``micro_batch_size``), weighted ``w_i m_ij / b_i``; a batch in one piece gets exactly
        ``w_i``, so results without micro-batches are bitwise those of ``fn(i)``. Runs with TF32
        as the ``tf32`` option says (:func:`landscape.precision.tf32_matmuls`).

        ``split_on_oom=True`` (evaluations that recompute everything per call: losses, gradients,
        "jvp" and "double-backward" HVPs): on ``torch.OutOfMemoryError`` the pieces are halved
        (down to one example), a ``RuntimeWarning`` names the new ``micro_batch_size``, and the
        sum starts again; the size used is what results record (``micro_batch_size`` attribute).
        """
        while True:
            before = self.calls[kind] if kind is not None else 0
            try:
                return self._accumulate(fn, batch, kind, micro)
            except torch.OutOfMemoryError:
                if not (micro and split_on_oom) or max(max(s) for s in self.micro_batch_sizes) == 1:
                    raise
            # Out of the except block: the failed attempt's tensors (held by the traceback) are free now.
            if kind is not None:
                self.calls[kind] = before
            self._halve_pieces()

    def _halve_pieces(self) -> None:
        size = max(1, max(max(s) for s in self.micro_batch_sizes) // 2)
        self.micro_batch_size = size
        self._split_micro()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        warnings.warn(f"Objective: out of memory on {self.device}; evaluating every batch in pieces of "
                      f"micro_batch_size={size} examples from now on (the same function; set micro_batch_size "
                      "to start there)", RuntimeWarning, stacklevel=4)

    def _accumulate(self, fn: Callable[..., Tensor], batch: int | None, kind: str | None, micro: bool) -> Tensor:
        total = None
        with tf32_matmuls(self.tf32):
            for i in self.batch_ids(batch):
                w = 1.0 if batch is not None else self.batch_sizes[i] / self.num_samples
                if not micro:
                    value = fn(i).to(torch.float64) * w
                    total = value if total is None else total + value
                else:
                    sizes = self.micro_batch_sizes[i]
                    for j, m in enumerate(sizes):
                        wj = w if len(sizes) == 1 else w * m / self.batch_sizes[i]
                        value = fn(i, j).to(torch.float64) * wj
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

    def _piece(self, i: int, j: int | None) -> tuple[_inputs.Inputs, Tensor]:
        return self._batches[i] if j is None else self._micro[i][j]

    def _forward(self, theta: Tensor, i: int, buffers: dict[str, Tensor] | None = None,
                 bn_train: bool | None = None, j: int | None = None) -> Tensor:
        args, kwargs = _inputs.as_call(self._piece(i, j)[0])
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
        with tf32_matmuls(self.tf32):
            return self._forward(theta, i, buffers, bn_train)

    def buffer_copies(self) -> dict[str, Tensor]:
        """Fresh copies of the model's buffers as the objective holds them (device, ``dtype``),
        for :meth:`forward` / :meth:`loss_and_error` with ``buffers=``."""
        return {n: b.clone() for n, b in self._buffers.items()}

    def batch_loss(self, theta: Tensor, i: int, j: int | None = None) -> Tensor:
        """Mean loss of batch ``i`` (or of its piece ``j``, see ``micro_batch_size``) at ``theta``
        (the loss callable's value; model dtype)."""
        return self.loss_spec(self._forward(theta, i, j=j), self._piece(i, j)[1])

    def batch_loss_fn(self, i: int, j: int | None = None) -> Callable[[Tensor], Tensor]:
        """``theta -> mean loss of batch i`` (of its piece ``j``) as a pure function (for
        ``torch.func`` transforms)."""
        self.batch_ids(i)
        return lambda theta: self.batch_loss(theta, i, j)

    # ------------------------------------------------------------------ public evaluations
    def loss(self, theta: Tensor | None = None, batch: int | None = None) -> Tensor:
        """Mean loss (float64 scalar): over the data set (``batch=None``) or one batch.

        Differentiable in ``theta`` when ``theta`` requires grad (or under ``torch.func``).
        """
        theta = self.point(theta)
        return self.accumulate(lambda i, j: self.batch_loss(theta, i, j), batch, "loss", micro=True, split_on_oom=True)

    def loss_and_grad(self, theta: Tensor | None = None, batch: int | None = None) -> tuple[Tensor, Tensor]:
        """Mean loss (float64 scalar) and its gradient (``theta0``'s dtype); one forward and one
        backward per batch, accumulated in float64.

        Plain reverse mode on a leaf copy of ``theta``: the same function as
        ``torch.func.grad_and_value`` and 22-47 % cheaper per call on CPU conv nets (measured
        for the sharpness analysis on ResNet-20).
        """
        theta = self.point(theta).detach()

        def one(i: int, j: int) -> Tensor:
            t = theta.clone().requires_grad_(True)
            with torch.enable_grad():
                li = self.batch_loss(t, i, j)
                # A loss that does not depend on the group at all has no graph: zero gradient.
                gi = torch.autograd.grad(li, t, allow_unused=True)[0] if li.requires_grad else None
            gi = torch.zeros_like(t) if gi is None else gi
            return torch.cat([li.detach().reshape(1).to(torch.float64), gi.detach().to(torch.float64)])

        out = self.accumulate(one, batch, "grad", micro=True, split_on_oom=True)
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
        with tf32_matmuls(self.tf32):
            for i in self.batch_ids(batch):
                outs.extend(self._forward(theta, i, j=j) for j in range(len(self._micro[i])))
                self.calls["logits"] += 1
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    @property
    def class_targets(self) -> bool:
        """Whether the targets are class indices (integer), so a classification error exists."""
        return not self._batches[0][1].is_floating_point() and self._batches[0][1].dtype != torch.bool

    def _wrong(self, z: Tensor, i: int, j: int | None = None) -> Tensor:
        y = self._piece(i, j)[1]
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
        # Per-piece rates weighted by m_ij / N: the rate over all examples.
        return self.accumulate(lambda i, j: self._wrong(self._forward(theta, i, j=j), i, j)
                               / self.micro_batch_sizes[i][j], batch, "logits", micro=True, split_on_oom=True)

    @torch.no_grad()
    def loss_and_error(self, theta: Tensor | None = None, batch: int | None = None, *,
                       buffers: dict[str, Tensor] | None = None) -> tuple[Tensor, Tensor | None]:
        """Mean loss and misclassification rate (float64 scalars) from one forward per batch;
        the error is ``None`` when the targets are not class indices. ``buffers``: evaluate
        with these buffers instead of the model's (as in :meth:`forward`)."""
        theta = self.point(theta)
        errors = self.class_targets

        def one(i: int, j: int) -> Tensor:
            z = self._forward(theta, i, buffers, j=j)
            li = self.loss_spec(z, self._piece(i, j)[1]).reshape(1).to(torch.float64)
            if not errors:
                return li
            rate = self._wrong(z, i, j) / self.micro_batch_sizes[i][j]
            return torch.cat([li, rate.reshape(1)])

        out = self.accumulate(one, batch, "loss", micro=True, split_on_oom=True)
        return out[0], (out[1] if errors else None)

    def batches(self) -> list[tuple[_inputs.Inputs, Tensor]]:
        """The fixed ``(inputs, targets)`` batches (on the objective's device, cast to ``dtype`` if given)."""
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
        self._split_micro()
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
            f"loss={self.loss_name!r}, logit_normalize={self.logit_normalize}, device={str(self.device)!r})"
        )
