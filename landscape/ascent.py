"""The SAM ascent step, one home for the optimizer and the analyses.

For gradients ``g`` and a diagonal scale ``T >= 0`` (``None`` = identity), the steepest ascent
of radius ``rho`` in the norm ``||T^-1 e||_p`` (SAM-ON Eq. 5; SAM Eq. 2 with ``T = 1``):

    p = 2:    e = rho * T (T g) / ||T g||_2
    p = inf:  e = rho * T * sign(T g)

so ``||T^-1 e||_p = rho`` over the coordinates with ``T > 0``. The norm runs over *all* the
tensors given (a parameter group is one ball). Coordinates with ``T = 0`` get ``e = 0`` even
when their gradient is not finite, and ``||T g|| = 0`` gives ``e = 0`` (no direction to ascend),
without a host synchronization. Used by :meth:`landscape.optim.SAM.perturbation`, the one-step
sharpness (:mod:`landscape.analyses.sharpness`) and, through :func:`ascent_direction`, every
Auto-PGD step (:mod:`landscape.analyses.apgd`).

Example:
    >>> import torch
    >>> g, T = torch.tensor([3.0, -4.0]), torch.tensor([1.0, 0.5])
    >>> [e.tolist() for e in ascent_step([g], [T], rho=1.0, norm="linf")]
    [[1.0, -0.5]]
    >>> [round(v, 4) for v in ascent_step([g], None, rho=1.0, norm="l2")[0].tolist()]
    [0.6, -0.8]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

__all__ = ["NORMS", "ascent_direction", "ascent_step"]

Norm = Literal["linf", "l2"]
NORMS = ("linf", "l2")


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r} is not accepted; accepted: 'linf', 'l2'")


def ascent_direction(g: Tensor, norm: Norm) -> Tensor:
    """Steepest-ascent unit direction of one flat vector for the dual pair: ``sign(g)`` (l-inf)
    or ``g / ||g||_2`` (l2; zero for ``g = 0``)."""
    _check_norm(norm)
    if norm == "linf":
        return torch.sign(g)
    n = torch.linalg.vector_norm(g)
    return torch.where(n > 0, g / n.clamp(min=torch.finfo(g.dtype).tiny), torch.zeros_like(g))


def ascent_step(
    grads: Sequence[Tensor], scales: Sequence[Tensor | None] | None = None, *, rho: float, norm: Norm
) -> list[Tensor]:
    """The ascent step ``e`` for each tensor of ``grads`` (one ball over all of them).

    Args:
        grads: gradients ``g`` (any shapes).
        scales: ``T`` per tensor (same shapes, ``>= 0``; ``None`` entries or ``None``: T = 1).
        rho: radius, ``>= 0``.
        norm: ``"l2"`` or ``"linf"``.
    """
    _check_norm(norm)
    scales = [None] * len(grads) if scales is None else list(scales)
    if len(scales) != len(grads):
        raise ValueError(f"ascent_step: {len(grads)} gradients but {len(scales)} scales")
    # T g, exactly 0 where T = 0 (a non-finite gradient there must not leak into the norm).
    tgs = [g if t is None else torch.where(t > 0, t * g, torch.zeros_like(g)) for g, t in zip(grads, scales)]
    if norm == "linf":
        return [s if t is None else t * s for s, t in ((torch.sign(tg) * rho, t) for tg, t in zip(tgs, scales))]
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(tg) for tg in tgs]))
    factor = torch.where(total > 0, rho / total.clamp_min(torch.finfo(total.dtype).tiny), 0.0)
    return [(tg if t is None else t * tg) * factor for tg, t in zip(tgs, scales)]
