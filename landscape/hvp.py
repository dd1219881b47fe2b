"""Hessian-vector products of an :class:`~landscape.objective.Objective`: the four methods.

``H(theta) v = sum_i (b_i / N) H_i v`` over the objective's fixed batches (or one batch),
accumulated in float64 by :meth:`Objective.accumulate`; the result has ``theta0``'s dtype and
parameters the loss does not use give zero rows. Methods:

* ``"jvp"``: forward-over-reverse (``torch.func.jvp`` of ``torch.func.grad``), recomputed per
  product in constant memory;
* ``"double-backward"``: reverse-over-reverse (as PyHessian), recomputed per product; measured
  on CPU (torch 2.13, a 28k-parameter BatchNorm CNN) about 2x faster than ``jvp``;
* ``"retained-graph"``: reverse-over-reverse on each batch's gradient graph built once and kept:
  one backward per product and batch (81 ms vs 107 ms recomputed, 17.5k-parameter ResNet,
  bench/bench_hessian.py), memory for every batch's graph;
* ``"linearize"``: ``torch.func.linearize`` of the gradient, traced once per batch and replayed:
  the fastest per product once traced (0.14 s vs 0.23 s double-backward and 0.52 s jvp on a
  28k-parameter CNN, 256 samples, 1 CPU thread) but the trace costs ~50-100 products and every
  batch's graph stays in memory.

``"auto"`` (:func:`resolve_method`): "retained-graph" when the products cover one batch, else
"double-backward".

Example:
    >>> import torch
    >>> from torch import nn
    >>> from landscape.objective import Objective
    >>> obj = Objective(nn.Linear(3, 2), (torch.randn(8, 3), torch.randint(0, 2, (8,))), batch_size=4)
    >>> v = torch.randn(obj.numel)
    >>> torch.allclose(operator(obj, method="linearize")(v), hvp(obj, v, method="jvp"), atol=1e-6)
    True
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.func import grad, jvp, linearize

if TYPE_CHECKING:
    from landscape.objective import Objective

__all__ = ["METHODS", "hvp", "operator", "resolve_method"]

METHODS = ("jvp", "linearize", "double-backward", "retained-graph")


def resolve_method(obj: Objective, method: str = "auto", batch: int | None = None) -> str:
    """The concrete method for ``method`` ("auto" or one of :data:`METHODS`)."""
    if method == "auto":
        return "retained-graph" if len(obj.batch_ids(batch)) == 1 else "double-backward"
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not accepted; accepted: {', '.join(METHODS)}, auto")
    return method


def _double_backward(obj: Objective, theta: Tensor, i: int, v: Tensor) -> Tensor:
    t = theta.detach().requires_grad_(True)
    with torch.enable_grad():
        li = obj.batch_loss(t, i)
        g = torch.autograd.grad(li, t, create_graph=True, allow_unused=True)[0] if li.requires_grad else None
        if g is None or not g.requires_grad:  # the loss is linear in (or independent of) theta
            return torch.zeros_like(t)
        (hv,) = torch.autograd.grad(g, t, v, allow_unused=True)
    return torch.zeros_like(t) if hv is None else hv.detach()


def hvp(obj: Objective, v: Tensor, theta: Tensor | None = None, batch: int | None = None, *,
        method: str = "jvp") -> Tensor:
    """``H(theta) v`` recomputed for this one product ("jvp" or "double-backward")."""
    if method not in ("jvp", "double-backward"):
        raise ValueError(f"method={method!r} is not accepted by hvp; accepted: jvp, double-backward "
                         "(linearize, retained-graph: use hvp_operator)")
    theta = obj.point(theta).detach()
    obj.check_flat(v, "v")
    v = v.to(device=obj.device, dtype=theta.dtype)
    if method == "jvp":
        try:
            out = obj.accumulate(lambda i: jvp(grad(obj.batch_loss_fn(i)), (theta,), (v,))[1], batch, "hvp")
        except RuntimeError as e:
            if "ZeroTensors are immutable" not in str(e):
                raise
            # torch 2.13: forward-over-reverse through F.mse_loss / nn.MSELoss (and some other
            # losses) with a target that has no tangent fails inside torch.
            raise RuntimeError(
                f"hvp method 'jvp' failed inside torch's forward-mode AD through loss {obj.loss_spec.spec!r} "
                f"({e}); use method='double-backward' (or hvp_method='auto', which never picks jvp)"
            ) from None
    else:
        out = obj.accumulate(lambda i: _double_backward(obj, theta, i, v), batch, "hvp")
    return out.to(theta.dtype)


def operator(obj: Objective, theta: Tensor | None = None, batch: int | None = None, *,
             method: str = "jvp") -> Callable[[Tensor], Tensor]:
    """A matvec ``v -> H(theta) v`` at a fixed point (Lanczos, trace estimators); its products
    are counted in ``obj.calls["hvp"]``."""
    method = resolve_method(obj, method, batch)
    theta = obj.point(theta).detach()
    ids = obj.batch_ids(batch)
    if method in ("jvp", "double-backward"):
        return lambda v: hvp(obj, v, theta, batch, method=method)
    if method == "retained-graph":
        t = theta.clone().requires_grad_(True)
        grads: dict[int, Tensor | None] = {}
        with torch.enable_grad():
            for i in ids:
                li = obj.batch_loss(t, i)
                g = torch.autograd.grad(li, t, create_graph=True, allow_unused=True)[0] if li.requires_grad else None
                grads[i] = g if g is not None and g.requires_grad else None  # None: zero Hessian

        def product(i: int, v: Tensor) -> Tensor:
            g = grads[i]
            if g is None:
                return torch.zeros_like(t)
            (hv,) = torch.autograd.grad(g, t, v, retain_graph=True, allow_unused=True)
            return torch.zeros_like(t) if hv is None else hv.detach()
    else:
        with warnings.catch_warnings():
            # torch.fx constant folding inside linearize warns about its own graph internals.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            fns = {i: linearize(grad(obj.batch_loss_fn(i)), theta)[1] for i in ids}

        def product(i: int, v: Tensor) -> Tensor:
            return fns[i](v).detach()

    def matvec(v: Tensor) -> Tensor:
        obj.check_flat(v, "v")
        v = v.to(device=obj.device, dtype=theta.dtype)
        return obj.accumulate(lambda i: product(i, v), batch, "hvp").to(theta.dtype)

    return matvec
