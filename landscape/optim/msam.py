"""Momentum-SAM (MSAM; Becker et al., Section 2.4 and Algorithm 1).

MSAM takes the gradient at the weights shifted against the momentum vector,

    g = grad L(w - rho * v / ||v||),

where ``v`` is the base optimizer's running mean of gradients (SGD's ``momentum_buffer``,
Adam/AdamW's ``exp_avg``) before this step's update and ``||v||`` runs over all parameters
(MSAM Eq. 5). No extra forward/backward pass is needed.

Algorithm 1 keeps the weights shifted *between* steps (undo the last shift, update, shift again)
and moves back after the last step. Here each step shifts, runs forward/backward, and restores
the exact unshifted weights before the base optimizer updates them: the same sequence of
gradients and updates, but the parameters seen between steps (evaluation, checkpoints, resume)
are always the unshifted ones. SGD's and Adam's weight decay is coupled (part of the loss), so it
is also evaluated at the shifted weights, as in the MSAM reference code (its gradient gets
``weight_decay * (w_shifted - w)`` added); AdamW's decoupled decay acts on the unshifted weights.

BatchNorm statistics accumulate at the shifted weights; re-estimate them at the unshifted ones
with :func:`landscape.optim.bn.recalibrate_bn` before evaluation or saving.

Example:
    >>> import torch
    >>> from landscape.optim import MSAM, train_step
    >>> model = torch.nn.Linear(4, 2)
    >>> opt = MSAM(model, torch.optim.SGD, rho=3.0, lr=0.1, momentum=0.9)
    >>> x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    >>> for _ in range(2):
    ...     loss, _ = train_step(model, opt, x, y, torch.nn.functional.cross_entropy)
    >>> sorted(opt.state_dict()["state"][0])
    ['momentum_buffer']
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from landscape.config import MSAMConfig
from landscape.optim.sam import OptimizerWrapper, _cosine, _named_params
from landscape.precision import all_finite, scaled, scaler_enabled


def _buffer_key(cls: type[torch.optim.Optimizer]) -> str:
    if issubclass(cls, torch.optim.SGD):
        return "momentum_buffer"
    if issubclass(cls, (torch.optim.Adam, torch.optim.AdamW)):
        return "exp_avg"
    raise ValueError(
        f"MSAM: base optimizer {cls.__name__} keeps no momentum vector MSAM knows; accepted: "
        "torch.optim.SGD (momentum > 0), torch.optim.Adam, torch.optim.AdamW"
    )


class MSAM(OptimizerWrapper):
    """Momentum-SAM around SGD (``momentum_buffer``) or Adam/AdamW (``exp_avg``).

    Args:
        model_or_params: the model or an iterable of parameters / parameter groups.
        base_optimizer_class: ``torch.optim.SGD`` (momentum > 0), ``Adam`` or ``AdamW``.
        rho: shift length, ``>= 0`` (default ``MSAMConfig.rho`` = 3, the MSAM code's default for SGD).
        **base_kwargs: passed to the base optimizer.

    Attributes:
        rho_active: set to False to take plain base-optimizer steps (rho = 0, e.g. during
            warm-up); the trainer sets it every step.
        collect_stats: when True (default), :meth:`train_step` leaves ``last_stats`` (0-d
            tensors, no host sync): ``momentum_cosine`` and ``skipped``.

    Between steps the parameters are the unshifted ones. :meth:`step` takes a closure (forward
    + backward, returns the loss) evaluated at the shifted weights; :meth:`train_step` is the
    batch version.
    """

    def __init__(self, model_or_params, base_optimizer_class: type[torch.optim.Optimizer], *, rho: float = MSAMConfig.rho, **base_kwargs):
        if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not math.isfinite(rho) or rho < 0:
            raise ValueError(f"MSAM: rho must be a finite number >= 0, got {rho!r}")
        key = _buffer_key(base_optimizer_class) if isinstance(base_optimizer_class, type) else None
        model, _, base_params = _named_params(model_or_params)
        super().__init__(base_params, base_optimizer_class, **base_kwargs)
        for g in self.param_groups:
            if key == "momentum_buffer" and not g.get("momentum", 0) > 0:
                raise ValueError("MSAM: SGD needs momentum > 0 (the momentum buffer is the shift direction)")
            if key == "exp_avg" and not g["betas"][0] > 0:
                raise ValueError("MSAM: Adam/AdamW needs betas[0] > 0 (exp_avg is the shift direction)")
        self.model = model
        self.rho = float(rho)
        self.rho_active = True
        self.collect_stats = True
        self.last_stats: dict[str, torch.Tensor] = {}
        self._key = key
        self._decoupled = issubclass(base_optimizer_class, torch.optim.AdamW)
        self._backup: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def _coupled_decay(self, group: dict) -> float:
        if self._decoupled or group.get("decoupled_weight_decay", False):
            return 0.0
        return float(group.get("weight_decay", 0.0))

    @property
    def shifted(self) -> bool:
        """True between :meth:`shift` and :meth:`unshift`."""
        return self._backup is not None

    @torch.no_grad()
    def shift(self) -> None:
        """Move to ``w - rho v/||v||`` (no-op when ``rho_active`` is False, rho = 0 or v = 0/absent)."""
        if self._backup is not None:
            raise RuntimeError("MSAM.shift called twice; call unshift in between")
        self._backup = []
        if not self.rho_active or self.rho == 0:
            return
        pairs = [(p, self.state[p][self._key]) for g in self.param_groups for p in g["params"]
                 if self._key in self.state.get(p, {})]
        if not pairs:
            return
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(v) for _, v in pairs]))
        factor = torch.where(norm > 0, -self.rho / norm.clamp_min(torch.finfo(norm.dtype).tiny), 0.0)
        for p, v in pairs:
            self._backup.append((p, p.detach().clone()))
            p.add_(v * factor)

    @torch.no_grad()
    def unshift(self) -> None:
        """Restore the exact unshifted weights; add coupled weight decay's shift term to the grads."""
        if self._backup is None:
            raise RuntimeError("MSAM.unshift called without shift")
        decay = {id(p): self._coupled_decay(g) for g in self.param_groups for p in g["params"]}
        for p, w in self._backup:
            wd = decay[id(p)]
            if wd and p.grad is not None:
                # the base optimizer adds wd * w; the loss at the shifted point has wd * w_shifted
                p.grad.add_(p.detach() - w, alpha=wd)
            p.copy_(w)
        self._backup = None

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
        """Shift, ``closure()`` (forward + backward, returns the loss), unshift, base step.

        Gradients are cleared before the closure. Returns the closure's loss (at the shifted
        weights).
        """
        if closure is None:
            raise ValueError(
                "MSAM.step needs a closure that runs forward and backward and returns the loss "
                "(evaluated at the shifted weights); or use landscape.optim.train_step"
            )
        self.zero_grad(set_to_none=True)
        self.shift()
        try:
            with torch.enable_grad():
                loss = closure()
        finally:
            self.unshift()
        self.base_optimizer.step()
        return loss

    def train_step(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        loss_fn: Callable,
        *,
        autocast: Callable[[], Any] | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One MSAM step on a batch; see :func:`landscape.optim.train_step`.

        ``model`` may be wrapped in ``DistributedDataParallel``: its backward all-reduces the
        gradient, so every replica applies the same update and the momentum buffers (the shift
        direction, normed over all parameters) stay identical across replicas. ``autocast`` and
        ``scaler`` as for :meth:`SAM.train_step`: fp16 gradients are unscaled before the
        weight-decay shift term is added, and an inf/NaN step is skipped with the weights
        restored. Sets ``last_stats`` (``momentum_cosine``: cosine between the momentum vector
        used for the shift and the gradient at the shifted weights, NaN before the first step;
        ``skipped``) when ``collect_stats``.
        """
        amp = autocast or nullcontext
        use_scaler = scaler_enabled(scaler)
        self.zero_grad(set_to_none=True)
        self.last_stats = {}
        momenta = self._momenta() if self.collect_stats else []
        self.shift()
        try:
            with amp():
                logits = model(x)
                loss = loss_fn(logits, y)
            scaled(loss, scaler).backward()
            if use_scaler:
                scaler.unscale_(self.base_optimizer)  # the decay term below is added unscaled
        finally:
            self.unshift()
        if self.collect_stats:
            self.last_stats = self._stats(momenta, logits)
        if use_scaler:
            scaler.step(self.base_optimizer)  # skipped (weights already restored) on inf/NaN
            scaler.update()
            if self.collect_stats:
                grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
                self.last_stats["skipped"] = ~all_finite(grads)
        else:
            self.base_optimizer.step()
        return loss.detach(), logits.detach()

    def _momenta(self) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """(parameter, its momentum vector); read before the base step updates it, so no copy."""
        return [(p, self.state[p][self._key]) for g in self.param_groups for p in g["params"]
                if self._key in self.state.get(p, {})]

    @torch.no_grad()
    def _stats(self, momenta, logits) -> dict[str, torch.Tensor]:
        pairs = [(v, p.grad) for p, v in momenta if p.grad is not None]
        if pairs:
            cos = _cosine([v for v, _ in pairs], [g for _, g in pairs])
        else:
            cos = torch.full((), math.nan, device=logits.device)
        return {"momentum_cosine": cos, "skipped": torch.zeros((), dtype=torch.bool, device=logits.device)}
