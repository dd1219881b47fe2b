"""Mixed precision: ``fp32`` | ``bf16`` | ``fp16`` as an autocast context and a ``GradScaler``.

``bf16`` and ``fp16`` run the forward passes under ``torch.autocast`` (matrix products and
convolutions in the low precision, reductions and the loss in float32); parameters, gradients
and optimizer state stay float32. ``fp16`` has a narrow exponent range, so the loss is scaled
before backward by a :class:`torch.amp.GradScaler`; the SAM family unscales the ascent gradient
before taking its norm, and a step whose gradients are inf/NaN is skipped entirely (no ascent,
no descent, weights unchanged) while the scaler lowers its scale. ``bf16`` needs no scaler.
Both run on CPU (``torch.autocast("cpu")``) as well as on CUDA.

TF32 (:func:`tf32_matmuls`): on Ampere and later GPUs, float32 matrix products and convolutions
may run with TF32 operands (10-bit mantissa); the analyses turn it off (``"ieee"``) unless
``tf32=True`` is asked for, only while they compute, and restore torch's settings afterwards.
torch 2.13 enables TF32 for cuDNN convolutions by default, so "off" is a real change there.
:func:`emulated_tf32` rounds the float32 operands of every matrix product and convolution to
TF32's 10-bit mantissa on any device (the products still accumulate in float32), to estimate
TF32's error on a machine without a TF32 GPU (README "Analyses on a GPU" has the table).

Pass a :class:`Precision`'s pieces to any train step::

    prec = Precision.make("fp16", device)
    loss, logits = train_step(model, opt, x, y, loss_fn, autocast=prec.autocast, scaler=prec.scaler)

Example:
    >>> import torch
    >>> prec = Precision.make("bf16", "cpu")
    >>> with prec.autocast():
    ...     y = torch.nn.Linear(4, 2)(torch.randn(3, 4))
    >>> y.dtype, prec.scaler is None
    (torch.bfloat16, True)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial

import torch
from torch.utils._python_dispatch import TorchDispatchMode

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Precision:
    """A precision mode: ``autocast`` (a zero-argument context factory) and ``scaler`` (fp16 only)."""

    name: str
    device_type: str
    autocast: Callable[[], AbstractContextManager]
    scaler: torch.amp.GradScaler | None

    @classmethod
    def make(cls, name: str, device: torch.device | str) -> Precision:
        """``fp32`` (no autocast), ``bf16`` (autocast) or ``fp16`` (autocast + GradScaler)."""
        if name not in PRECISIONS:
            raise ValueError(f"precision={name!r} is not known; accepted: {', '.join(PRECISIONS)}")
        device_type = torch.device(device).type
        if name == "fp32":
            return cls(name, device_type, nullcontext, None)
        ctx = partial(torch.autocast, device_type=device_type, dtype=_DTYPES[name])
        scaler = torch.amp.GradScaler(device_type) if name == "fp16" else None
        return cls(name, device_type, ctx, scaler)


def scaler_enabled(scaler: torch.amp.GradScaler | None) -> bool:
    return scaler is not None and scaler.is_enabled()


def scaled(loss: torch.Tensor, scaler: torch.amp.GradScaler | None) -> torch.Tensor:
    """``loss`` times the current scale (fp16) or ``loss`` itself."""
    return scaler.scale(loss) if scaler_enabled(scaler) else loss


def all_finite(tensors: list[torch.Tensor]) -> torch.Tensor:
    """0-d bool tensor: every entry of every tensor is finite (no host sync)."""
    if not tensors:
        return torch.ones((), dtype=torch.bool)
    return torch.stack([torch.isfinite(t).all() for t in tensors]).all()


def _tf32_backends() -> list:
    b = torch.backends
    # The new (torch >= 2.9) per-backend API only: reading the legacy ``allow_tf32`` flags after
    # the new API set them differently raises in torch 2.13.
    return [b.cuda.matmul, b.cudnn.conv, b.cudnn.rnn]


@contextlib.contextmanager
def tf32_matmuls(enabled: bool) -> Iterator[None]:
    """float32 CUDA matmuls and cuDNN convolutions/RNNs in TF32 (``enabled``) or full IEEE float32
    (not ``enabled``) inside the block; torch's settings restored on exit, also on errors.

    Example:
        >>> before = torch.backends.cudnn.conv.fp32_precision
        >>> with tf32_matmuls(False):
        ...     torch.backends.cudnn.conv.fp32_precision
        'ieee'
        >>> torch.backends.cudnn.conv.fp32_precision == before
        True
    """
    backends = _tf32_backends()
    saved = [b.fp32_precision for b in backends]
    want = "tf32" if enabled else "ieee"
    try:
        for b in backends:
            if b.fp32_precision != want:
                b.fp32_precision = want
        yield
    finally:
        for b, v in zip(backends, saved):
            if b.fp32_precision != v:
                b.fp32_precision = v


def round_to_tf32(t: torch.Tensor) -> torch.Tensor:
    """A float32 tensor rounded to TF32 precision (10 explicit mantissa bits, round to nearest
    even; the 8-bit exponent is float32's); other dtypes are returned unchanged.

    Example:
        >>> x = torch.tensor([1 + 2**-10, 1 + 2**-11, 1 + 3 * 2**-11])
        >>> round_to_tf32(x).tolist() == [1 + 2**-10, 1.0, 1 + 2 * 2**-10]
        True
    """
    if t.dtype != torch.float32:
        return t
    bits = t.contiguous().view(torch.int32)
    lsb = (bits >> 13) & 1  # round half to even on the last kept bit
    bits = (bits + (0x0FFF + lsb)) & ~0x1FFF
    return bits.view(torch.float32).view(t.shape)


# aten ops whose float32 tensor operands tensor cores read in TF32, with the operand positions.
_TF32_OPS = {
    "mm": (0, 1), "addmm": (1, 2), "bmm": (0, 1), "baddbmm": (1, 2),
    "convolution": (0, 1), "convolution_backward": (0, 1, 2),
}


class _EmulatedTF32(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in _TF32_OPS:
            args = tuple(round_to_tf32(a) if i in _TF32_OPS[name] and isinstance(a, torch.Tensor) else a
                         for i, a in enumerate(args))
        return func(*args, **kwargs)


@contextlib.contextmanager
def emulated_tf32() -> Iterator[None]:
    """Inside the block, the float32 operands of matrix products (``mm``, ``addmm``, ``bmm``,
    ``baddbmm``) and convolutions (forward and backward) are rounded to TF32
    (:func:`round_to_tf32`) before the op, which then accumulates in float32 as tensor cores do.
    An emulation for estimating TF32's error without such a GPU (it does not model the GPU's
    accumulation order); float64 ops are untouched.

    Example:
        >>> a, b = torch.randn(8, 8), torch.randn(8, 8)
        >>> with emulated_tf32():
        ...     c = a @ b
        >>> torch.equal(c, round_to_tf32(a) @ round_to_tf32(b))
        True
    """
    with _EmulatedTF32():
        yield
