"""Auto-PGD (Croce & Hein, 2020) as a generic maximizer over a scaled l_p ball.

Maximizes ``f(delta)`` over ``{delta : ||T^-1 delta||_p <= rho}`` for p in {2, inf} and a
non-negative elementwise scale ``T`` (``T = |w| + eta`` for adaptive sharpness, ``T = 1``
otherwise; SAM-ON Eq. 6 and Appendix B.10). The search runs in ``u = T^-1 delta`` over the
plain ball ``||u||_p <= rho``, where the projection is exact and O(P):

* l-inf: ``clamp(u, -rho, rho)``; the ascent direction is ``sign(T * g)``;
* l2: ``u * min(1, rho / ||u||)``; the ascent direction is ``T g / ||T g||``, i.e. the step in
  ``delta`` is ``T^2 g / ||T g||``, the steepest-ascent direction for the norm ``||T^-1 .||_2``
  (not ``T g / ||g||``, the reference code's bug 5 in REFERENCES.md "Sharpness").

Coordinates with ``T = 0`` (exactly-zero weights under adaptive scaling) have no room to move:
they are frozen at ``u = 0``; no division by ``T`` ever happens, so nothing becomes NaN
(bug 3 of the reference code).

The schedule follows Croce & Hein (2020), Algorithm 1:

* step size ``eta = 2 * rho``; momentum ``alpha = 0.75``, except a plain projected step
  (``alpha = 1``) on the first iteration, so one step already reaches the full radius (bug 2);
* checkpoints ``w_j = ceil(p_j * steps)`` with ``p_0 = 0, p_1 = 0.22,
  p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``, computed in integer hundredths
  (``steps=20`` gives 14 at ``p = 0.70``, where float rounding gives 15);
* at a checkpoint the step size is halved if (condition 1) the value increased over the previous
  iterate in at most 75% of the steps since the last checkpoint (``<=`` as in the AutoAttack
  code; the paper writes ``<``), or (condition 2) the step size was not halved at the last
  checkpoint and the best value did not improve since then;
* on halving the iterate goes back to the best point *together with its gradient* (bug 4), and
  the next step is a plain projected step from there (the jump back is not a step, so it carries
  no momentum).

The best point is tracked from the value returned by the same call that returns the gradient,
so each iteration costs exactly one call of ``fn`` (one forward+backward for a loss): a run
makes ``restarts * (steps + 1)`` calls, minus one when the first start's value and gradient are
passed as ``init``. The loop never synchronizes with the device: the halving decisions are
tensors, so on a GPU the host can queue the next step while the current one runs.

Example:
    >>> import torch
    >>> b = torch.tensor([1.0, -2.0, 0.5])
    >>> res = apgd(lambda d: (b @ d, b), torch.ones(3), rho=0.1, norm="linf", steps=5)
    >>> round(res.value, 6)  # rho * ||b||_1
    0.35
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

# The steepest-ascent direction is the SAM ascent step's (one home: landscape.ascent); in u-space
# each Auto-PGD step is the (A)SAM step of radius eta from u.
from landscape.ascent import ascent_direction

__all__ = ["APGDResult", "apgd", "ascent_direction", "checkpoints", "lp_norm", "project"]

Norm = Literal["linf", "l2"]
ValueAndGrad = Callable[[torch.Tensor], tuple[torch.Tensor | float, torch.Tensor]]

# Momentum weight on the new projected point (Croce & Hein 2020, Section 3.2: alpha = 0.75).
ALPHA = 0.75


def checkpoints(steps: int) -> list[int]:
    """Iterations ``w_j`` (``0 < w_j <= steps``) at which APGD may halve its step size.

    ``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` and
    ``w_j = ceil(p_j * steps)`` (Croce & Hein 2020, Section 3.2), in exact integer arithmetic
    on hundredths. Repeated values (short runs) are merged.

    Example:
        >>> checkpoints(20)
        [5, 9, 12, 14, 16, 18, 19, 20]
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    out: list[int] = []
    p_prev, p = 0, 22
    while p <= 100:
        w = -(-p * steps // 100)  # ceil without floats
        if not out or w > out[-1]:
            out.append(w)
        p_prev, p = p, p + max(p - p_prev - 3, 6)
    return out


@dataclass
class APGDResult:
    """What :func:`apgd` found.

    Attributes:
        delta: best perturbation ``T * u`` (1-D).
        u: best point in the unit-scale ball (``0`` on frozen coordinates).
        value: ``f(delta)``, the best value over all iterates and restarts.
        start_value: ``f`` at the first restart's start (``f(0)`` unless ``random_start``).
        history: best value so far after each call of ``fn`` (restarts concatenated; never
            decreasing), shape ``(restarts * (steps + 1),)``.
        values: ``f`` at each iterate, same shape.
        step_sizes: step size used to reach each iterate (``nan`` for the start points).
        constraint_norm: ``||u||_p`` of the best point (``<= rho`` up to rounding).
        num_evals: calls of ``fn`` made (forward+backward passes for a loss).
        num_halvings: step-size halvings over all restarts.
        best_restart: index of the restart that found ``value``.
    """

    delta: torch.Tensor
    u: torch.Tensor
    value: float
    start_value: float
    history: torch.Tensor
    values: torch.Tensor
    step_sizes: torch.Tensor
    constraint_norm: float
    num_evals: int
    num_halvings: int
    best_restart: int


def project(u: torch.Tensor, rho: float, norm: Norm) -> torch.Tensor:
    """Exact Euclidean projection onto ``{||u||_p <= rho}`` (O(P))."""
    if norm == "linf":
        return u.clamp(-rho, rho)
    # A point inside the ball is returned unchanged (rho/||u|| can round just below 1 on the
    # boundary, found by a property test); torch.where keeps this free of host syncs.
    n = torch.linalg.vector_norm(u)
    return u * torch.where(n > rho, rho / n, torch.ones_like(n))


def lp_norm(u: torch.Tensor, norm: Norm) -> torch.Tensor:
    return torch.linalg.vector_norm(u, ord=float("inf") if norm == "linf" else 2)


def _random_point(free: torch.Tensor, rho: float, norm: Norm, gen: torch.Generator) -> torch.Tensor:
    """A uniform random point of the ball, zero on frozen coordinates (``free`` is 0/1)."""
    if norm == "linf":
        return (2 * torch.rand(free.shape, generator=gen, device=free.device, dtype=free.dtype) - 1) * rho * free
    z = torch.randn(free.shape, generator=gen, device=free.device, dtype=free.dtype) * free
    n = torch.linalg.vector_norm(z)
    d = int(free.sum())
    if d == 0 or float(n) == 0.0:
        return torch.zeros_like(free)
    # Uniform in the d-ball: uniform direction, radius rho * U^(1/d).
    r = torch.rand((), generator=gen, device=free.device, dtype=free.dtype) ** (1.0 / d)
    return z / n * (rho * r)


def apgd(
    fn: ValueAndGrad,
    scale: torch.Tensor,
    *,
    rho: float,
    norm: Norm = "linf",
    steps: int = 20,
    restarts: int = 1,
    random_start: bool = False,
    generator: torch.Generator | None = None,
    init: tuple[torch.Tensor | float, torch.Tensor] | None = None,
) -> APGDResult:
    """Maximize ``fn`` over ``{delta : ||scale^-1 delta||_p <= rho}`` with Auto-PGD.

    Args:
        fn: ``delta -> (value, gradient of value w.r.t. delta)``; ``delta`` is 1-D like
            ``scale``. One call per iteration (see module docstring).
        scale: elementwise ``T >= 0`` (1-D, finite); zeros freeze their coordinates.
        rho: radius of the ball, ``> 0``.
        norm: ``"linf"`` or ``"l2"``.
        steps: iterations per restart (SAM-ON / Andriushchenko et al.: 20).
        restarts: independent runs; the first starts at ``delta = 0`` unless
            ``random_start``, the others at uniform random points of the ball.
        random_start: start the first run at a random point too.
        generator: source of the random starts (default: a generator seeded with 0 on
            ``scale``'s device); never the global RNG.
        init: ``(value, grad)`` of ``fn`` at ``delta = 0``, when the caller already has them
            (saves one call); used only by a first run that starts at 0.

    Returns:
        An :class:`APGDResult`; ``result.value >= fn(0)`` when the first run starts at 0.

    Example:
        >>> import torch
        >>> b = torch.tensor([3.0, 4.0])
        >>> res = apgd(lambda d: (b @ d, b), torch.ones(2), rho=1.0, norm="l2", steps=3)
        >>> round(res.value, 6), round(res.constraint_norm, 6)  # rho * ||b||_2, on the sphere
        (5.0, 1.0)
    """
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm={norm!r} is not accepted; accepted: 'linf', 'l2'")
    if not rho > 0 or rho != rho or rho == float("inf"):
        raise ValueError(f"rho must be a finite number > 0, got {rho}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    scale = scale.detach()
    if scale.ndim != 1 or not scale.is_floating_point():
        raise ValueError(f"scale must be a 1-D floating tensor, got shape {tuple(scale.shape)} {scale.dtype}")
    if not bool(torch.isfinite(scale).all()) or bool((scale < 0).any()):
        raise ValueError("scale must be finite and >= 0 (T = |w| + eta or 1)")
    rho = float(rho)
    free = (scale > 0).to(scale.dtype)
    frozen = scale == 0
    dev, dt = scale.device, scale.dtype
    checks = {w for w in checkpoints(steps) if w < steps}  # a check after the last step changes nothing
    bounds = [0, *sorted(checks)]
    interval = {w: w - bounds[i] for i, w in enumerate(bounds[1:])}

    def evaluate(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        value, grad = fn(scale * u)
        return _as_value(value, dev), _grad_u(grad, scale, frozen)

    best_all: torch.Tensor | None = None
    u_all = torch.zeros_like(scale)
    restart_all = torch.zeros((), dtype=torch.long, device=dev)
    history, values, sizes = [], [], []
    halvings = torch.zeros((), dtype=torch.long, device=dev)
    num_evals = 0
    start_value = None
    nan = torch.tensor(float("nan"), device=dev, dtype=dt)  # step size of a start point
    for r in range(restarts):
        if r == 0 and not random_start:
            u = torch.zeros_like(scale)
        else:
            if generator is None:
                generator = torch.Generator(device=dev).manual_seed(0)
            u = _random_point(free, rho, norm, generator)
        if r == 0 and not random_start and init is not None:
            val, gu = _as_value(init[0], dev), _grad_u(init[1], scale, frozen)
        else:
            val, gu = evaluate(u)
            num_evals += 1
        if start_value is None:
            start_value = val
        best, u_best, g_best = val, u, gu
        if best_all is None:
            best_all = best
        else:
            take = best > best_all
            best_all = torch.where(take, best, best_all)
            u_all = torch.where(take, u, u_all)
            restart_all = torch.where(take, r, restart_all)
        history.append(best_all)
        values.append(val)
        sizes.append(nan)
        eta = torch.tensor(2.0 * rho, device=dev, dtype=dt)
        alpha = torch.ones((), device=dev, dtype=dt)  # first step: plain projected step
        u_prev, prev_val = u, val
        increases = torch.zeros((), dtype=torch.long, device=dev)
        best_at_check = best
        halved_at_check = torch.zeros((), dtype=torch.bool, device=dev)
        for k in range(1, steps + 1):
            z = project(u + eta * ascent_direction(gu, norm), rho, norm)
            u_new = project(u + alpha * (z - u) + (1 - alpha) * (u - u_prev), rho, norm)
            u_prev, u = u, u_new
            sizes.append(eta)
            val, gu = evaluate(u)
            num_evals += 1
            values.append(val)
            increases = increases + (val > prev_val).long()
            prev_val = val
            improved = val > best
            best = torch.where(improved, val, best)
            u_best = torch.where(improved, u, u_best)
            g_best = torch.where(improved, gu, g_best)
            take = best > best_all
            best_all = torch.where(take, best, best_all)
            u_all = torch.where(take, u_best, u_all)
            restart_all = torch.where(take, r, restart_all)
            history.append(best_all)
            alpha = torch.full((), ALPHA, device=dev, dtype=dt)
            if k in checks:
                # Condition 1: increases in at most 75% of the steps (integers: 4c <= 3L).
                cond1 = 4 * increases <= 3 * interval[k]
                # Condition 2: not halved last time, and the best value did not improve.
                cond2 = ~halved_at_check & (best <= best_at_check)
                halve = cond1 | cond2
                halvings = halvings + halve.long()
                eta = torch.where(halve, eta / 2, eta)
                u = torch.where(halve, u_best, u)
                gu = torch.where(halve, g_best, gu)
                prev_val = torch.where(halve, best, prev_val)
                u_prev = torch.where(halve, u, u_prev)  # no momentum across the jump back
                alpha = torch.where(halve, torch.ones_like(alpha), alpha)
                halved_at_check = halve
                best_at_check = best
                increases = torch.zeros_like(increases)
    assert best_all is not None and start_value is not None
    u_all = torch.where(frozen, torch.zeros_like(u_all), u_all)
    return APGDResult(
        delta=scale * u_all,
        u=u_all,
        value=float(best_all),
        start_value=float(start_value),
        history=torch.stack(history).cpu(),
        values=torch.stack(values).cpu(),
        step_sizes=torch.stack(sizes).cpu(),
        constraint_norm=float(lp_norm(u_all, norm)),
        num_evals=num_evals,
        num_halvings=int(halvings),
        best_restart=int(restart_all),
    )


def _as_value(value: torch.Tensor | float, device: torch.device) -> torch.Tensor:
    # Values are compared and reported in float64 whatever the parameters' dtype: a float32
    # loss difference of 1e-3 on a loss of 1 would otherwise keep only ~4 digits.
    return torch.as_tensor(value, device=device).detach().to(torch.float64).reshape(())


def _grad_u(grad: torch.Tensor, scale: torch.Tensor, frozen: torch.Tensor) -> torch.Tensor:
    """Chain rule ``d f / d u = T * g``; exactly 0 on frozen coordinates, even if ``g`` is not finite."""
    g = grad.detach().reshape(-1).to(scale.dtype)
    if g.shape != scale.shape:
        raise ValueError(f"fn returned a gradient of {g.numel()} entries for a scale of {scale.numel()}")
    return torch.where(frozen, torch.zeros_like(g), scale * g)
