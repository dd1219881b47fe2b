"""Exact references shared by the tests: tiny models, data, and the loss as a pure function of
the flat parameter vector (for dense Hessians with ``torch.func`` / ``torch.autograd``)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def tiny_mlp(d_in: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d_in, 6), nn.Tanh(), nn.Linear(6, 3))


def tiny_bn_cnn(side: int = 6) -> nn.Module:
    """Conv + BatchNorm + linear for ``(1, side, side)`` inputs, with non-trivial running statistics
    so eval mode is not the identity normalization."""
    torch.manual_seed(1)
    m = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * (side - 2) ** 2, 3)
    )
    m[1].running_mean.normal_()
    m[1].running_var.uniform_(0.5, 2.0)
    m[1].weight.data.uniform_(0.5, 1.5)
    m[1].bias.data.normal_()
    return m


class PartlyUsed(nn.Module):
    """A model with a layer its forward never uses (its gradient and Hessian rows are zero)."""

    def __init__(self):
        super().__init__()
        self.used = nn.Linear(4, 3)
        self.unused = nn.Linear(4, 3)

    def forward(self, x):
        return self.used(x)


def data(n, shape, classes=3, seed=0, dtype=None):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=dtype), torch.randint(0, classes, (n,), generator=g)


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def reference_loss(model: nn.Module, x, y, *, bn_mode: str = "eval", batch_size: int | None = None):
    """``theta -> mean cross-entropy`` over all parameters, written independently of Objective.

    ``eval``: one forward over all of ``x`` with the running statistics. ``train``: batch
    statistics on consecutive chunks of ``batch_size``, each chunk's loss weighted by its size.
    """
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    buffers = dict(model.named_buffers())
    n = len(y)

    def f(theta):
        ps = {k: t.view(s) for k, t, s in zip(names, theta.split(sizes), shapes)}
        if bn_mode == "eval":
            m = copy.deepcopy(model).eval()
            return F.cross_entropy(torch.func.functional_call(m, {**ps, **buffers}, (x,)), y)
        total = 0
        for s in range(0, n, batch_size):
            m = copy.deepcopy(model).train()
            xb, yb = x[s : s + batch_size], y[s : s + batch_size]
            total = total + F.cross_entropy(torch.func.functional_call(m, ps, (xb,)), yb) * len(yb) / n
        return total

    return f
