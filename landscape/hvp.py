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

``"auto"`` (:func:`resolve_method`): "retained-graph" when the products cover one batch in one
piece, else "double-backward".

Micro-batches (the objective's ``micro_batch_size``): every method computes per piece of a
batch and sums with the weights ``m_ij / N`` (:meth:`Objective.accumulate` with ``micro=True``),
so a batch that does not fit in memory costs the memory of one piece ("jvp",
"double-backward"; on ``torch.OutOfMemoryError`` these halve the pieces and start the product
again, see :meth:`Objective.accumulate`); "retained-graph" and "linearize" keep every piece's
graph, so they save nothing there and are never split automatically. Everything stays on the objective's device: vectors are moved there once per
product and the result is returned there.

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

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.func import grad, jvp, linearize

from landscape.precision import tf32_matmuls

if TYPE_CHECKING:
    from landscape.objective import Objective

__all__ = ["METHODS", "hvp", "operator", "resolve_method"]

METHODS = ("jvp", "linearize", "double-backward", "retained-graph")


def resolve_method(obj: Objective, method: str = "auto", batch: int | None = None) -> str:
    """The concrete method for ``method`` ("auto" or one of :data:`METHODS`)."""
    if method == "auto":
        ids = obj.batch_ids(batch)
        one_piece = len(ids) == 1 and len(obj.micro_batch_sizes[ids[0]]) == 1
        return "retained-graph" if one_piece else "double-backward"
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not accepted; accepted: {', '.join(METHODS)}, auto")
    return method


def _double_backward(obj: Objective, theta: Tensor, i: int, j: int, v: Tensor) -> Tensor:
    t = theta.detach().requires_grad_(True)
    with torch.enable_grad():
        li = obj.batch_loss(t, i, j)
        g = torch.autograd.grad(li, t, create_graph=True, allow_unused=True)[0] if li.requires_grad else None
        if g is None or not g.requires_grad:  # the loss is linear in (or independent of) theta
            return torch.zeros_like(t)
        (hv,) = torch.autograd.grad(g, t, v, allow_unused=True)
    return torch.zeros_like(t) if hv is None else hv.detach()


@contextlib.contextmanager
def _oom_hint(method: str) -> Iterator[None]:
    """Out of memory while keeping every batch's graph: say what fits (the same error type)."""
    try:
        yield
    except torch.OutOfMemoryError as e:
        raise torch.OutOfMemoryError(
            f"{e}\nhvp method {method!r} keeps the gradient graph of every batch and piece; use "
            "hvp_method='double-backward' (constant memory, split automatically when out of memory) "
            "or 'auto' with micro_batch_size set"
        ) from None


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
            out = obj.accumulate(lambda i, j: jvp(grad(obj.batch_loss_fn(i, j)), (theta,), (v,))[1], batch, "hvp",
                                 micro=True, split_on_oom=True)
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
        out = obj.accumulate(lambda i, j: _double_backward(obj, theta, i, j, v), batch, "hvp", micro=True,
                             split_on_oom=True)
    return out.to(theta.dtype)


def operator(obj: Objective, theta: Tensor | None = None, batch: int | None = None, *,
             method: str = "jvp") -> Callable[[Tensor], Tensor]:
    """A matvec ``v -> H(theta) v`` at a fixed point (Lanczos, trace estimators); its products
    are counted in ``obj.calls["hvp"]``."""
    method = resolve_method(obj, method, batch)
    theta = obj.point(theta).detach()
    pieces = [(i, j) for i in obj.batch_ids(batch) for j in range(len(obj.micro_batch_sizes[i]))]
    if method in ("jvp", "double-backward"):
        return lambda v: hvp(obj, v, theta, batch, method=method)
    if method == "retained-graph":
        t = theta.clone().requires_grad_(True)
        grads: dict[tuple[int, int], Tensor | None] = {}
        with torch.enable_grad(), tf32_matmuls(obj.tf32), _oom_hint(method):
            for i, j in pieces:
                li = obj.batch_loss(t, i, j)
                g = torch.autograd.grad(li, t, create_graph=True, allow_unused=True)[0] if li.requires_grad else None
                grads[i, j] = g if g is not None and g.requires_grad else None  # None: zero Hessian

        def product(i: int, j: int, v: Tensor) -> Tensor:
            g = grads[i, j]
            if g is None:
                return torch.zeros_like(t)
            (hv,) = torch.autograd.grad(g, t, v, retain_graph=True, allow_unused=True)
            return torch.zeros_like(t) if hv is None else hv.detach()
    else:
        with warnings.catch_warnings():
            # torch.fx constant folding inside linearize warns about its own graph internals.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            with tf32_matmuls(obj.tf32), _oom_hint(method):
                fns = {(i, j): linearize(grad(obj.batch_loss_fn(i, j)), theta)[1] for i, j in pieces}

        def product(i: int, j: int, v: Tensor) -> Tensor:
            return fns[i, j](v).detach()

    def matvec(v: Tensor) -> Tensor:
        obj.check_flat(v, "v")
        v = v.to(device=obj.device, dtype=theta.dtype)
        return obj.accumulate(lambda i, j: product(i, j, v), batch, "hvp", micro=True).to(theta.dtype)

    return matvec
