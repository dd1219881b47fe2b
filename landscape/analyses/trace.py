"""Trace of a symmetric operator from matrix-vector products: Hutch++ and Hutchinson.

* Hutchinson (1989): ``tr(A) ~ mean_j z_j^T A z_j`` with Rademacher probes ``z_j``; its error
  falls like ``1/sqrt(matvecs)``.
* Hutch++ (Meyer, Musco, Musco & Woodruff, 2021): spend ``s`` matvecs on a sketch ``Y = A S``,
  take an orthonormal basis ``Q`` of ``Y``, compute ``tr(Q^T A Q)`` exactly (``s`` more
  matvecs) and estimate the rest, ``tr((I - QQ^T) A (I - QQ^T))``, with Hutchinson probes
  projected off ``Q``. The top of the spectrum, which dominates a Hessian's trace, is captured
  exactly, so the error falls like ``1/matvecs`` for fast-decaying spectra. Measured on Hessians
  here (``REFERENCES.md``): 1e-2 (tiny) and 2.2e-3 (70k-parameter CNN) at 99 matvecs, vs 3.4e-2
  and 1.8e-2 for Hutchinson.

Both stop on the **standard error** of the stochastic part (``std(samples)/sqrt(count)``, after
at least ``min_samples`` probes) reaching ``rtol * |estimate|``, or on the matvec budget - never
on a change of the running mean, which stops early on a lucky streak (PyHessian's rule, errors
up to 17 % measured here).

Example:
    >>> import torch
    >>> A = torch.diag(torch.arange(1.0, 101.0, dtype=torch.float64))
    >>> est = hutchinson(A, max_matvecs=20, seed=0)  # Rademacher is exact on a diagonal matrix
    >>> round(est.trace, 8), est.stderr
    (5050.0, 0.0)
    >>> est = hutchpp(A, max_matvecs=200, sketch=100)  # a sketch spanning the space is exact
    >>> round(est.trace, 8), est.stderr, est.matvecs
    (5050.0, 0.0, 200)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from landscape.analyses.lanczos import Matvec, as_matvec, rademacher

__all__ = ["TRACE_METHODS", "TraceEstimate", "estimate_trace", "hutchinson", "hutchpp"]

TRACE_METHODS = ("hutch++", "hutchinson")


@dataclass
class TraceEstimate:
    """A trace estimate with its standard error and cost.

    Attributes:
        trace: the estimate.
        stderr: standard error of the stochastic part (0 when the sketch spans the space).
        matvecs: operator applications spent.
        method: "hutch++" or "hutchinson".
        exact_part: ``tr(Q^T A Q)`` of the Hutch++ sketch (0 for Hutchinson).
        samples: the stochastic samples ``z^T A z`` (Hutch++: of the projected operator).
        converged: whether ``stderr <= rtol * |trace|`` was reached within the budget.
        history: ``(matvecs, estimate, stderr)`` after each probe, for error-vs-budget plots.
    """

    trace: float
    stderr: float
    matvecs: int
    method: str
    exact_part: float
    samples: np.ndarray
    converged: bool
    history: list[tuple[int, float, float]] = field(default_factory=list)


def _check(max_matvecs, rtol, min_samples) -> None:
    if not isinstance(max_matvecs, int) or max_matvecs < 1:
        raise ValueError(f"max_matvecs (trace_samples) must be a positive int, got {max_matvecs!r}")
    if rtol is not None and not rtol >= 0:
        raise ValueError(f"rtol (trace_rtol) must be >= 0 or None, got {rtol!r}")
    if not isinstance(min_samples, int) or min_samples < 2:
        raise ValueError(f"min_samples must be an int >= 2 (a standard error needs two samples), got {min_samples!r}")


def _probe_loop(matvec, n, dev, gen, budget, base, rtol, min_samples, project, spent, history):
    samples: list[float] = []
    est, se = base, math.inf
    for _ in range(budget):
        z = rademacher(n, gen, dev)
        if project is not None:
            z = project(z)
        samples.append(float(z @ matvec(z)))
        spent += 1
        est = base + float(np.mean(samples))
        se = float(np.std(samples, ddof=1) / math.sqrt(len(samples))) if len(samples) > 1 else math.inf
        history.append((spent, est, se))
        if rtol is not None and len(samples) >= min_samples and se <= rtol * abs(est):
            break
    return samples, est, se, spent


def hutchinson(
    operator: Matvec | Tensor,
    dim: int | None = None,
    *,
    max_matvecs: int = 100,
    rtol: float | None = 1e-2,
    min_samples: int = 10,
    seed: int | torch.Generator = 0,
    device: torch.device | str | None = None,
) -> TraceEstimate:
    """Hutchinson's estimator with Rademacher probes, stopped on its standard error.

    Args:
        operator: symmetric matvec (float64 in) or dense matrix.
        dim: dimension of a callable operator.
        max_matvecs: budget (one matvec per probe).
        rtol: stop once ``stderr <= rtol * |estimate|`` (``None``: spend the whole budget).
        min_samples: probes before the standard error is trusted.
        seed: int or CPU ``torch.Generator``.
        device: device of the probes for a callable operator.
    """
    _check(max_matvecs, rtol, min_samples)
    matvec, n, dev = as_matvec(operator, dim, device)
    gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))
    history: list = []
    samples, est, se, spent = _probe_loop(matvec, n, dev, gen, max_matvecs, 0.0, rtol, min_samples, None, 0, history)
    ok = rtol is not None and len(samples) >= min_samples and se <= rtol * abs(est)
    return TraceEstimate(est, se, spent, "hutchinson", 0.0, np.asarray(samples), ok, history)


def hutchpp(
    operator: Matvec | Tensor,
    dim: int | None = None,
    *,
    max_matvecs: int = 99,
    rtol: float | None = 1e-2,
    sketch: int | None = None,
    min_samples: int = 10,
    seed: int | torch.Generator = 0,
    device: torch.device | str | None = None,
) -> TraceEstimate:
    """Hutch++ with Rademacher sketch and probes, stopped on the standard error of its
    stochastic (deflated) part.

    Args:
        operator: symmetric matvec (float64 in) or dense matrix.
        dim: dimension of a callable operator.
        max_matvecs: total budget; the sketch costs ``2 * sketch`` of it.
        rtol: stop the probes once ``stderr <= rtol * |estimate|`` (``None``: whole budget).
        sketch: sketch size ``s`` (default ``max_matvecs // 3``, Meyer et al.'s split; capped at
            ``dim``). With ``s == dim`` the estimate is exact and no probes are drawn.
        min_samples: probes before the standard error is trusted.
        seed: int or CPU ``torch.Generator``.
        device: device of the vectors for a callable operator.
    """
    _check(max_matvecs, rtol, min_samples)
    matvec, n, dev = as_matvec(operator, dim, device)
    gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))
    s = max_matvecs // 3 if sketch is None else sketch
    if not isinstance(s, int) or s < 1 or 2 * min(s, n) > max_matvecs:
        raise ValueError(
            f"sketch={sketch!r} (s={s}) needs 1 <= s and 2*s <= max_matvecs={max_matvecs} (the sketch costs 2*s matvecs)"
        )
    s = min(s, n)
    S = rademacher(n, gen, dev, count=s)
    Y = torch.stack([matvec(S[i]) for i in range(s)], dim=1)  # (n, s)
    Q, _ = torch.linalg.qr(Y)
    exact = float(sum(Q[:, i] @ matvec(Q[:, i]) for i in range(s)))
    spent = 2 * s
    history: list = [(spent, exact, math.inf)]
    if s == n:
        return TraceEstimate(exact, 0.0, spent, "hutch++", exact, np.zeros(0), True, history)

    def project(z: Tensor) -> Tensor:
        # Twice, so the probe is orthogonal to Q to working precision.
        z = z - Q @ (Q.T @ z)
        return z - Q @ (Q.T @ z)

    samples, est, se, spent = _probe_loop(
        matvec, n, dev, gen, max_matvecs - spent, exact, rtol, min_samples, project, spent, history
    )
    ok = rtol is not None and len(samples) >= min_samples and se <= rtol * abs(est)
    return TraceEstimate(est, se, spent, "hutch++", exact, np.asarray(samples), ok, history)


def estimate_trace(
    operator: Matvec | Tensor,
    dim: int | None = None,
    *,
    method: str = "hutch++",
    max_matvecs: int = 99,
    rtol: float | None = 1e-2,
    seed: int | torch.Generator = 0,
    device: torch.device | str | None = None,
) -> TraceEstimate:
    """Dispatch to :func:`hutchpp` (default) or :func:`hutchinson` by ``method``."""
    if method == "hutch++":
        return hutchpp(operator, dim, max_matvecs=max_matvecs, rtol=rtol, seed=seed, device=device)
    if method == "hutchinson":
        return hutchinson(operator, dim, max_matvecs=max_matvecs, rtol=rtol, seed=seed, device=device)
    raise ValueError(f"trace method {method!r} is not accepted; accepted: {', '.join(TRACE_METHODS)}")
