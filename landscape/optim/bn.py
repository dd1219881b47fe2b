"""BatchNorm running statistics: freeze them for one forward pass, or re-estimate them.

Two situations in sharpness-aware training leave running statistics describing the wrong
weights:

* SAM's second forward pass runs at the perturbed point ``w + e``; in train mode it would update
  the running statistics with features of weights that are never evaluated. The reference
  SAM-ON code lets that happen (both passes update them); :func:`frozen_bn_stats` undoes it.
* MSAM (Section 2.4) evaluates every training batch at shifted weights, so the statistics
  accumulate at ``w - rho v/||v||`` while the model is evaluated and saved at ``w``.
  :func:`recalibrate_bn` re-estimates them at the current weights, as the MSAM reference code
  does once after training.

Only modules deriving from ``torch.nn.modules.batchnorm._NormBase`` (BatchNorm, SyncBatchNorm,
InstanceNorm with ``track_running_stats=True``) carry running statistics; LayerNorm and GroupNorm
have none, so both helpers leave them alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _stat_modules(model: nn.Module) -> list[_NormBase]:
    return [m for m in model.modules() if isinstance(m, _NormBase) and m.track_running_stats]


def _save(mods: list[_NormBase]) -> list[list[torch.Tensor | None]]:
    return [[None if getattr(m, b, None) is None else getattr(m, b).detach().clone() for b in _BUFFERS] for m in mods]


@torch.no_grad()
def _restore(mods: list[_NormBase], saved: list[list[torch.Tensor | None]]) -> None:
    for m, bufs in zip(mods, saved):
        for name, value in zip(_BUFFERS, bufs):
            if value is not None:
                getattr(m, name).copy_(value)


@contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """Leave running statistics (and ``num_batches_tracked``) exactly as they were.

    Inside the block the model still normalizes with batch statistics in train mode; on exit the
    buffers are copied back, bit for bit, also when the block raises. Used for SAM's second
    forward pass at the perturbed weights (``SAM(..., freeze_bn_stats=True)``).

    Example:
        >>> import torch
        >>> bn = torch.nn.BatchNorm1d(3)
        >>> with frozen_bn_stats(bn):
        ...     _ = bn(torch.randn(8, 3))
        >>> int(bn.num_batches_tracked), float(bn.running_mean.abs().sum())
        (0, 0.0)
    """
    mods = _stat_modules(model)
    saved = _save(mods)
    try:
        yield
    finally:
        _restore(mods, saved)


def _first_tensor(batch) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise TypeError(
        f"recalibrate_bn: a batch must be an input tensor or an (x, y, ...) tuple, got {type(batch).__name__}"
    )


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable) -> None:
    """Recompute BatchNorm running statistics at the current weights.

    Resets every running-statistics buffer, then runs the model in train mode over ``batches``
    with cumulative averaging (``momentum=None``: each batch's mean and unbiased variance weigh
    1/number-of-batches, as in ``torch.optim.swa_utils.update_bn``). Afterwards each module's
    ``momentum`` and each module's train/eval flag are restored; only the statistics change. If a
    forward pass raises, the old statistics are put back as well. A model without running
    statistics is left untouched.

    Args:
        model: the network (its parameters are not changed).
        batches: iterable of input tensors or ``(x, y, ...)`` tuples; inputs are moved to the
            model's device.

    Example:
        >>> import torch
        >>> bn = torch.nn.BatchNorm1d(2).eval()
        >>> recalibrate_bn(bn, [torch.ones(4, 2), 3 * torch.ones(4, 2)])
        >>> bn.running_mean.tolist(), bn.training
        ([2.0, 2.0], False)
    """
    mods = _stat_modules(model)
    if not mods:
        return
    param = next(iter(model.parameters()), None)
    buf = next(iter(model.buffers()), None)
    device = (param if param is not None else buf).device
    saved = _save(mods)
    momenta = [m.momentum for m in mods]
    modes = [(m, m.training) for m in model.modules()]
    ok = False
    try:
        for m in mods:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        n = 0
        for batch in batches:
            model(_first_tensor(batch).to(device))
            n += 1
        if n == 0:
            raise ValueError("recalibrate_bn got no batches; pass at least one batch of inputs")
        ok = True
    finally:
        for m, mom in zip(mods, momenta):
            m.momentum = mom
        for m, training in modes:
            m.training = training
        if not ok:
            _restore(mods, saved)
