"""Mixed precision: ``fp32`` | ``bf16`` | ``fp16`` as an autocast context and a ``GradScaler``.

``bf16`` and ``fp16`` run the forward passes under ``torch.autocast`` (matrix products and
convolutions in the low precision, reductions and the loss in float32); parameters, gradients
and optimizer state stay float32. ``fp16`` has a narrow exponent range, so the loss is scaled
before backward by a :class:`torch.amp.GradScaler`; the SAM family unscales the ascent gradient
before taking its norm, and a step whose gradients are inf/NaN is skipped entirely (no ascent,
no descent, weights unchanged) while the scaler lowers its scale. ``bf16`` needs no scaler.
Both run on CPU (``torch.autocast("cpu")``) as well as on CUDA.

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

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial

import torch

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
