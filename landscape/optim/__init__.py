"""Optimizers: plain SGD/AdamW, the SAM family (SAM, ASAM, Fisher-SAM x masks) and MSAM.

``build_optimizer(model, cfg)`` turns a :class:`~landscape.config.TrainConfig` into an optimizer
and ``train_step(model, optimizer, x, y, loss_fn)`` runs one training step for any of them, so the
trainer needs no case distinction.

Example:
    >>> import torch
    >>> from landscape.config import SAMConfig, TrainConfig
    >>> from landscape.models import build_model
    >>> from landscape.optim import build_optimizer, train_step
    >>> model = build_model("mlp", input_shape=(8,), num_classes=3, width=16, norm="batch")
    >>> cfg = TrainConfig(sam=SAMConfig(variant="asam-el-l2", rho=0.5, mask="norm"))
    >>> opt = build_optimizer(model, cfg)
    >>> loss, logits = train_step(model, opt, torch.randn(16, 8), torch.randint(0, 3, (16,)),
    ...                           torch.nn.functional.cross_entropy)
    >>> type(opt).__name__, type(opt.base_optimizer).__name__, tuple(logits.shape)
    ('SAM', 'SGD', (16, 3))
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import nn

from landscape.optim.bn import frozen_bn_stats, recalibrate_bn
from landscape.optim.msam import MSAM
from landscape.optim.sam import MASKS, SAM, VARIANTS, OptimizerWrapper

__all__ = [
    "MASKS",
    "MSAM",
    "SAM",
    "VARIANTS",
    "OptimizerWrapper",
    "base_optimizer_spec",
    "build_optimizer",
    "frozen_bn_stats",
    "recalibrate_bn",
    "train_step",
]


def base_optimizer_spec(cfg) -> tuple[type[torch.optim.Optimizer], dict]:
    """The base optimizer class and keyword arguments a ``TrainConfig`` asks for (``cfg.optimizer``)."""
    name = cfg.optimizer
    if name == "sgd":
        return torch.optim.SGD, {
            "lr": cfg.lr, "momentum": cfg.momentum, "nesterov": cfg.nesterov, "weight_decay": cfg.weight_decay,
        }
    if name == "adamw":
        return torch.optim.AdamW, {"lr": cfg.lr, "betas": tuple(cfg.betas), "weight_decay": cfg.weight_decay}
    raise ValueError(f"unknown base optimizer {name!r}; accepted: sgd, adamw")


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """``cfg.optimizer`` (SGD/AdamW), wrapped in :class:`SAM` when ``cfg.sam`` is set or in
    :class:`MSAM` when ``cfg.msam`` is set (the one switch; see :class:`~landscape.config.TrainConfig`).

    Only trainable parameters (``requires_grad``) are optimized.
    """
    cls, kwargs = base_optimizer_spec(cfg)
    if cfg.sam is not None and cfg.msam is not None:
        raise ValueError("choose either sam=... or msam=..., not both")
    if cfg.msam is not None:
        return MSAM(model, cls, rho=cfg.msam.rho, **kwargs)
    if cfg.sam is not None:
        return SAM(model, cls, **dataclasses.asdict(cfg.sam), ddp_perturbation=cfg.ddp_perturbation, **kwargs)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    return cls(params, **kwargs)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    autocast: Callable[[], AbstractContextManager] | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One full training step with any optimizer from :func:`build_optimizer`.

    * plain: forward, backward, step;
    * :class:`SAM`: per chunk of ``m`` samples (the whole batch if ``m`` is None): ascent pass
      at ``w`` with gradients only for masked parameters, ``first_step``, second pass at
      ``w + e`` (BatchNorm statistics frozen if ``freeze_bn_stats``), exact restore; then the
      base step with the mean of the chunks' gradients;
    * :class:`MSAM`: shift, forward/backward at the shifted weights, unshift, base step.

    Mixed precision (:class:`landscape.precision.Precision` makes both): ``autocast`` (a
    function returning a context, e.g. ``lambda: torch.autocast("cpu", dtype=torch.bfloat16)``)
    wraps the forward passes; ``scaler`` (fp16) scales the loss, and a step whose gradients are
    not finite is skipped (SAM: the ascent gradient is unscaled before its norm, and an inf/NaN
    in either pass skips both the ascent and the descent, weights unchanged).

    ``model`` may be wrapped in ``DistributedDataParallel`` (``x, y``: this replica's shard):
    plain and MSAM steps all-reduce in their one backward; SAM's ascent pass runs under
    ``no_sync`` (see ``SAM(ddp_perturbation=...)``).

    The model's train/eval mode is the caller's choice. ``loss_fn`` must return the mean loss.

    Returns:
        ``(loss, logits)``, detached: the mean loss and the logits of the first pass (at ``w``
        for plain and SAM; at the shifted weights, its only pass, for MSAM).
    """
    if isinstance(optimizer, (SAM, MSAM)):
        return optimizer.train_step(model, x, y, loss_fn, autocast=autocast, scaler=scaler)
    optimizer.zero_grad(set_to_none=True)
    with autocast() if autocast is not None else contextlib.nullcontext():
        logits = model(x)
        loss = loss_fn(logits, y)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)  # skipped when the unscaled gradients hold inf/NaN
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss.detach(), logits.detach()
