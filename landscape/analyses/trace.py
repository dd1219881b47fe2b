"""Trace of a symmetric operator from matrix-vector products: XTrace, Hutch++, Hutchinson, and
deflation by a basis that was already paid for.

* Hutchinson (1989): ``tr(A) ~ mean_j z_j^T A z_j`` with Rademacher probes ``z_j``; its error
  falls like ``1/sqrt(matvecs)``.
* Hutch++ (Meyer, Musco, Musco & Woodruff, 2021): spend ``s`` matvecs on a sketch ``Y = A S``,
  take an orthonormal basis ``Q`` of ``Y``, compute ``tr(Q^T A Q)`` exactly (``s`` more
  matvecs) and estimate the rest, ``tr((I - QQ^T) A (I - QQ^T))``, with Hutchinson probes
  projected off ``Q``. The error falls like ``1/matvecs`` for fast-decaying spectra.
* XTrace (Epperly, Tropp & Webber 2024, "XTrace: making the most of every sample in stochastic
  trace estimation", SIAM J. Matrix Anal. Appl., arXiv 2301.07825): ``s = matvecs/2`` test
  vectors ``omega_i`` (uniform on the sphere of radius ``sqrt(n)``) serve *both* as the sketch
  and as Hutchinson probes. Estimate ``i`` deflates with the basis of ``A Omega`` *without*
  column ``i`` (so ``omega_i`` is independent of it) and probes the remainder with
  ``omega_i``; the trace is the mean of the ``s`` exchangeable estimates and their spread gives
  the error estimate. All ``s`` leave-one-out bases come from one QR (``Y = QR``, the
  projector without column ``i`` is ``Q (I - s_i s_i^T) Q^T`` with ``s_i`` the normalized
  ``i``-th column of ``R^{-T}``), so it costs ``2 s`` matvecs and ``O(n s^2)`` flops. Its
  Hutchinson part uses the "normalized" probe ``sqrt(n - s + 1) u / ||u||`` of the paper, which
  is unbiased because ``u`` is rotation invariant in the ``(n - s + 1)``-dimensional
  complement.
* :func:`deflated_trace`: ``tr(A) = tr(B^T A B) + tr((I - BB^T) A (I - BB^T))`` for an
  orthonormal basis ``B`` whose exact part ``tr(B^T A B)`` is already known (the Lanczos basis
  of the eigenvalue part of a Hessian analysis: ``tr(B^T A B) = sum(alpha)``, no matvec); any
  of the three estimators above estimates the remainder, drawing its vectors in the complement
  of ``B`` (dimension ``n - rank B``). On a matrix of rank ``<= rank B`` whose range ``B``
  spans, the estimate is exact.

All stop on the **standard error** of the stochastic part (``std(samples)/sqrt(count)``, after
at least ``min_samples`` probes or test vectors) reaching ``rtol * |estimate|``, or on the
matvec budget - never on a change of the running mean, which stops early on a lucky streak
(PyHessian's rule, errors up to 17 % measured here). XTrace adds its test vectors in blocks
(``block``), updating the QR, so it can stop early too.

Example:
    >>> import torch
    >>> A = torch.diag(torch.arange(1.0, 101.0, dtype=torch.float64))
    >>> est = hutchinson(A, max_matvecs=20, seed=0)  # Rademacher is exact on a diagonal matrix
    >>> round(est.trace, 8), est.stderr
    (5050.0, 0.0)
    >>> est = hutchpp(A, max_matvecs=200, sketch=100)  # a sketch spanning the space is exact
    >>> round(est.trace, 8), est.stderr, est.matvecs
    (5050.0, 0.0, 200)
    >>> est = xtrace(A, max_matvecs=40, rtol=None, seed=0)
    >>> abs(est.trace - 5050) < 4 * est.stderr, est.matvecs
    (True, 40)
    >>> B = torch.eye(100, dtype=torch.float64)[:3]  # deflate e_1..e_3, exact part 1 + 2 + 3
    >>> round(deflated_trace(torch.diag(torch.tensor([1.0, 2, 3] + [0.0] * 97)), B, 6.0).trace, 8)
    6.0
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from landscape.analyses.lanczos import Matvec, as_matvec, rademacher

__all__ = ["TRACE_METHODS", "TraceEstimate", "deflated_trace", "estimate_trace", "hutchinson", "hutchpp", "xtrace"]

TRACE_METHODS = ("xtrace", "hutch++", "hutchinson")


@dataclass
class TraceEstimate:
    """A trace estimate with its standard error and cost.

    Attributes:
        trace: the estimate.
        stderr: standard error of the stochastic part (0 when the sketch spans the space).
        matvecs: operator applications spent.
        method: "xtrace", "hutch++" or "hutchinson".
        exact_part: the exactly computed part: ``tr(B^T A B)`` of a deflation basis plus, for
            Hutch++, ``tr(Q^T A Q)`` of its sketch (0 for plain Hutchinson and XTrace).
        samples: the stochastic samples (Hutchinson: ``z^T A z``; Hutch++: of the projected
            operator; XTrace: the ``s`` exchangeable estimates of the whole trace).
        converged: whether ``stderr <= rtol * |trace|`` was reached within the budget.
        history: ``(matvecs, estimate, stderr)`` after each probe (XTrace: each block).
        deflation: rank of the deflation basis (0: none).
    """

    trace: float
    stderr: float
    matvecs: int
    method: str
    exact_part: float
    samples: np.ndarray
    converged: bool
    history: list[tuple[int, float, float]] = field(default_factory=list)
    deflation: int = 0


def _check(max_matvecs, rtol, min_samples) -> None:
    if not isinstance(max_matvecs, int) or max_matvecs < 1:
        raise ValueError(f"max_matvecs (trace_samples) must be a positive int, got {max_matvecs!r}")
    if rtol is not None and not rtol >= 0:
        raise ValueError(f"rtol (trace_rtol) must be >= 0 or None, got {rtol!r}")
    if not isinstance(min_samples, int) or min_samples < 2:
        raise ValueError(f"min_samples must be an int >= 2 (a standard error needs two samples), got {min_samples!r}")


def _generator(seed: int | torch.Generator) -> torch.Generator:
    return seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))


@dataclass
class _Space:
    """Where the estimator works: all of R^n, or the complement of an orthonormal basis ``B``
    (rows), with the operator ``P A P`` and vectors drawn in the complement."""

    matvec: Matvec
    n: int  # ambient dimension
    dim: int  # dimension of the space the estimator works in
    device: torch.device
    project: Callable[[Tensor], Tensor] | None = None

    def proj(self, z: Tensor) -> Tensor:
        return z if self.project is None else self.project(z)


def _space(operator, dim, device, basis: Tensor | None) -> _Space:
    matvec, n, dev = as_matvec(operator, dim, device)
    if basis is None or basis.shape[0] == 0:
        return _Space(matvec, n, n, dev)
    if basis.ndim != 2 or basis.shape[1] != n:
        raise ValueError(f"the deflation basis must have shape (k, {n}) (orthonormal rows), got {tuple(basis.shape)}")
    B = basis.to(device=dev, dtype=torch.float64)

    def project(z: Tensor) -> Tensor:
        # Twice ("twice is enough"): orthogonal to B to working precision.
        for _ in range(2):
            z = z - B.T @ (B @ z)
        return z

    return _Space(lambda v: project(matvec(v)), n, n - B.shape[0], dev, project)


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


def _done(rtol, count, min_samples, se, est) -> bool:
    return rtol is not None and count >= min_samples and se <= rtol * abs(est)


def _exact_in(sp: _Space, gen: torch.Generator, base: float, method: str, spent: int, deflation: int) -> TraceEstimate:
    """The trace over an orthonormal basis of the whole working space (``sp.dim`` matvecs): used
    when the budget can span it."""
    if sp.dim == 0:
        return TraceEstimate(base, 0.0, spent, method, base, np.zeros(0), True, [(spent, base, 0.0)], deflation)
    G = sp.proj(rademacher(sp.n, gen, sp.device, count=sp.dim).T)
    Q, _ = torch.linalg.qr(sp.proj(torch.linalg.qr(G)[0]))
    exact = base + float(sum(Q[:, i] @ sp.matvec(Q[:, i]) for i in range(sp.dim)))
    spent += sp.dim
    return TraceEstimate(exact, 0.0, spent, method, exact, np.zeros(0), True, [(spent, exact, 0.0)], deflation)


def _hutchinson(sp: _Space, gen, max_matvecs, rtol, min_samples, base, deflation) -> TraceEstimate:
    history: list = []
    if sp.dim == 0:
        return _exact_in(sp, gen, base, "hutchinson", 0, deflation)
    samples, est, se, spent = _probe_loop(sp.matvec, sp.n, sp.device, gen, max_matvecs, base, rtol, min_samples,
                                          sp.project, 0, history)
    ok = _done(rtol, len(samples), min_samples, se, est)
    return TraceEstimate(est, se, spent, "hutchinson", base, np.asarray(samples), ok, history, deflation)


def _hutchpp(sp: _Space, gen, max_matvecs, rtol, sketch, min_samples, base, deflation) -> TraceEstimate:
    s = max_matvecs // 3 if sketch is None else sketch
    if not isinstance(s, int) or s < 1 or 2 * min(s, sp.n) > max_matvecs:
        raise ValueError(
            f"sketch={sketch!r} (s={s}) needs 1 <= s and 2*s <= max_matvecs={max_matvecs} (the sketch costs 2*s matvecs)"
        )
    if s >= sp.dim and sp.dim < sp.n:  # deflated to a space the sketch spans
        return _exact_in(sp, gen, base, "hutch++", 0, deflation)
    s = min(s, sp.n)
    S = sp.proj(rademacher(sp.n, gen, sp.device, count=s).T)
    Y = torch.stack([sp.matvec(S[:, i]) for i in range(s)], dim=1)  # (n, s)
    Q, _ = torch.linalg.qr(Y)
    exact = base + float(sum(Q[:, i] @ sp.matvec(Q[:, i]) for i in range(s)))
    spent = 2 * s
    history: list = [(spent, exact, math.inf)]
    if s == sp.n:
        return TraceEstimate(exact, 0.0, spent, "hutch++", exact, np.zeros(0), True, history, deflation)

    def project(z: Tensor) -> Tensor:
        z = sp.proj(z)
        # Twice, so the probe is orthogonal to Q to working precision.
        z = z - Q @ (Q.T @ z)
        return z - Q @ (Q.T @ z)

    samples, est, se, spent = _probe_loop(
        sp.matvec, sp.n, sp.device, gen, max_matvecs - spent, exact, rtol, min_samples, project, spent, history
    )
    ok = _done(rtol, len(samples), min_samples, se, est)
    return TraceEstimate(est, se, spent, "hutch++", exact, np.asarray(samples), ok, history, deflation)


def _sphere(sp: _Space, gen: torch.Generator, count: int) -> Tensor:
    """``count`` columns uniform on the sphere of radius ``sqrt(dim)`` of the working space
    (Gaussian, projected, normalized): the test vectors of XTrace."""
    G = torch.randn(count, sp.n, generator=gen, dtype=torch.float64).to(sp.device).T
    G = sp.proj(G)
    return G * (math.sqrt(sp.dim) / torch.linalg.vector_norm(G, dim=0, keepdim=True))


def _xtrace_estimates(Q: Tensor, R: Tensor, H: Tensor, W: Tensor, dim: int) -> np.ndarray:
    """The ``s`` exchangeable XTrace estimates from ``Y = A Omega = QR``, ``H = Q^T A Q`` and
    ``W = Q^T Omega`` (all ``s x s`` algebra, float64).

    Estimate ``i``: ``tr(Pi_i A Pi_i) + scale_i u_i^T A u_i`` with ``Pi_i = Q (I - s_i s_i^T) Q^T``
    (the projector onto the span of ``Y`` without column ``i``), ``u_i = (I - Pi_i) omega_i`` and
    ``scale_i = (dim - s + 1) / ||u_i||^2``. Writing ``r_i = omega_i - Q w_i``, ``c_i = s_i^T w_i``:
    ``u_i = r_i + c_i Q s_i``, ``||u_i||^2 = ||omega_i||^2 - ||w_i||^2 + c_i^2`` and, since
    ``A omega_i = Q R e_i`` and ``A`` is symmetric,
    ``u_i^T A u_i = w_i^T H w_i - w_i^T R_i + 2 c_i (s_i^T R_i - s_i^T H w_i) + c_i^2 s_i^T H s_i``.
    """
    s = R.shape[0]
    eye = torch.eye(s, dtype=R.dtype, device=R.device)
    S = torch.linalg.solve_triangular(R, eye, upper=True).T  # R^{-T}
    S = S / torch.linalg.vector_norm(S, dim=0, keepdim=True)
    HS, HW = H @ S, H @ W
    sHs = (S * HS).sum(0)
    wHw = (W * HW).sum(0)
    wR = (W * R).sum(0)
    sR = (S * R).sum(0)
    sHw = (S * HW).sum(0)
    c = (S * W).sum(0)
    uAu = wHw - wR + 2 * c * (sR - sHw) + c * c * sHs
    unorm2 = dim - (W * W).sum(0) + c * c
    scale = (dim - s + 1) / unorm2
    ests = torch.trace(H) - sHs + scale * uAu
    return ests.cpu().numpy()


def _xtrace(sp: _Space, gen, max_matvecs, rtol, min_samples, base, deflation, block) -> TraceEstimate:
    s_max = max_matvecs // 2
    if s_max < 1:
        raise ValueError(f"xtrace needs max_matvecs >= 2 (each test vector costs 2 matvecs), got {max_matvecs}")
    if sp.dim <= s_max:  # the test vectors would span the working space: compute it exactly
        return _exact_in(sp, gen, base, "xtrace", 0, deflation)
    if not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive int, got {block!r}")
    Om = torch.empty(sp.n, 0, dtype=torch.float64, device=sp.device)
    Q = torch.empty(sp.n, 0, dtype=torch.float64, device=sp.device)
    R = torch.empty(0, 0, dtype=torch.float64, device=sp.device)
    H = torch.empty(0, 0, dtype=torch.float64, device=sp.device)
    spent, history, scale_y = 0, [], 0.0
    est, se, ests = base, math.inf, np.zeros(0)
    first = min(s_max, max(min_samples, 2))
    while Om.shape[1] < s_max:
        b = min(first if Om.shape[1] == 0 else block, s_max - Om.shape[1])
        O2 = _sphere(sp, gen, b)
        Y2 = torch.stack([sp.matvec(O2[:, i]) for i in range(b)], dim=1)
        spent += b
        # Block Gram-Schmidt, twice: Q1 and R11 are kept, so Q^T A Q needs matvecs on Q2 only.
        R12 = Q.T @ Y2
        Y2 = Y2 - Q @ R12
        d = Q.T @ Y2
        Y2, R12 = Y2 - Q @ d, R12 + d
        Q2, R22 = torch.linalg.qr(Y2)
        scale_y = max(scale_y, float(torch.linalg.vector_norm(Y2 + Q @ R12, dim=0).max()))
        sv = torch.linalg.svdvals(R22)
        if bool((sv <= 1e-10 * scale_y).any()):
            # A Omega is rank deficient (to far below float32 HVP noise): its span contains the
            # range of A (A symmetric, Omega generic), so tr(A) = tr(Q^T A Q) over a basis of that
            # span, exactly. (The leave-one-out formulas would divide by the zero part of R.)
            U, sv2, _ = torch.linalg.svd(Y2, full_matrices=False)
            Q2 = U[:, sv2 > 1e-10 * scale_y]
            exact = base + float(torch.trace(H)) + float(sum(Q2[:, i] @ sp.matvec(Q2[:, i]) for i in range(Q2.shape[1])))
            spent += Q2.shape[1]
            history.append((spent, exact, 0.0))
            return TraceEstimate(exact, 0.0, spent, "xtrace", exact, np.zeros(0), True, history, deflation)
        Z2 = torch.stack([sp.matvec(Q2[:, i]) for i in range(b)], dim=1)
        spent += b
        top = Q.T @ Z2  # Q1^T A Q2; Q2^T A Q1 is its transpose (A symmetric)
        H = torch.cat([torch.cat([H, top], 1), torch.cat([top.T, Q2.T @ Z2], 1)], 0)
        H = 0.5 * (H + H.T)
        k = R.shape[0]
        R = torch.cat([torch.cat([R, R12], 1), torch.cat([torch.zeros(b, k, dtype=R.dtype, device=R.device), R22], 1)], 0)
        Q = torch.cat([Q, Q2], 1)
        Om = torch.cat([Om, O2], 1)
        ests = _xtrace_estimates(Q, R, H, Q.T @ Om, sp.dim)
        est = base + float(ests.mean())
        se = float(ests.std(ddof=1) / math.sqrt(len(ests))) if len(ests) > 1 else math.inf
        history.append((spent, est, se))
        if _done(rtol, len(ests), min_samples, se, est):
            break
    ok = _done(rtol, len(ests), min_samples, se, est)
    return TraceEstimate(est, se, spent, "xtrace", base, base + ests, ok, history, deflation)


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
    return _hutchinson(_space(operator, dim, device, None), _generator(seed), max_matvecs, rtol, min_samples, 0.0, 0)


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
    return _hutchpp(_space(operator, dim, device, None), _generator(seed), max_matvecs, rtol, sketch, min_samples,
                    0.0, 0)


def xtrace(
    operator: Matvec | Tensor,
    dim: int | None = None,
    *,
    max_matvecs: int = 100,
    rtol: float | None = 1e-2,
    min_samples: int = 10,
    block: int = 5,
    seed: int | torch.Generator = 0,
    device: torch.device | str | None = None,
) -> TraceEstimate:
    """XTrace (Epperly, Tropp & Webber 2024): the exchangeable trace estimator with its error
    estimate (see the module docstring for the method).

    Args:
        operator: symmetric matvec (float64 in) or dense matrix.
        dim: dimension of a callable operator.
        max_matvecs: budget; ``max_matvecs // 2`` test vectors (2 matvecs each). When they
            would span the space (``dim <= max_matvecs // 2``) the trace is computed exactly
            with ``dim`` matvecs instead.
        rtol: stop once the standard error of the ``s`` exchangeable estimates
            (``std/sqrt(s)``, the paper's error estimate) is ``<= rtol * |estimate|``
            (``None``: spend the whole budget).
        min_samples: test vectors before the error estimate is trusted (also the first block).
        block: test vectors added per later block.
        seed: int or CPU ``torch.Generator``.
        device: device of the vectors for a callable operator.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> U, _ = torch.linalg.qr(torch.randn(200, 200, generator=g, dtype=torch.float64))
        >>> A = (U * 0.5 ** torch.arange(200.0, dtype=torch.float64)) @ U.T  # fast-decaying spectrum
        >>> est = xtrace(A, max_matvecs=60, rtol=None, seed=1)
        >>> abs(est.trace - float(torch.trace(A))) < 1e-6, est.matvecs
        (True, 60)
    """
    _check(max_matvecs, rtol, min_samples)
    return _xtrace(_space(operator, dim, device, None), _generator(seed), max_matvecs, rtol, min_samples, 0.0, 0,
                   block)


def deflated_trace(
    operator: Matvec | Tensor,
    basis: Tensor,
    exact_part: float,
    dim: int | None = None,
    *,
    method: str = "xtrace",
    max_matvecs: int = 100,
    rtol: float | None = 1e-2,
    min_samples: int = 10,
    seed: int | torch.Generator = 0,
    device: torch.device | str | None = None,
) -> TraceEstimate:
    """``exact_part + tr((I - BB^T) A (I - BB^T))``, the remainder estimated by ``method`` in the
    complement of ``B``.

    Args:
        operator: symmetric matvec (float64 in) or dense matrix.
        basis: ``B``, shape ``(k, n)``, orthonormal rows (e.g. the Lanczos basis of an eigenvalue
            run, or its top Ritz vectors).
        exact_part: ``tr(B^T A B)``, known without matvecs (the sum of the Lanczos ``alpha``, or
            of the Ritz values of the Ritz vectors).
        dim: dimension of a callable operator.
        method: "xtrace" (default), "hutch++" or "hutchinson" for the remainder.
        max_matvecs, rtol, min_samples, seed, device: as for the estimators; ``rtol`` is
            relative to the whole estimate. When the budget spans the complement, the remainder
            is computed exactly with ``n - k`` matvecs.

    Returns:
        :class:`TraceEstimate` with ``exact_part`` including ``exact_part`` given here and
        ``deflation = k``.
    """
    _check(max_matvecs, rtol, min_samples)
    sp = _space(operator, dim, device, basis)
    gen = _generator(seed)
    k = int(basis.shape[0])
    base = float(exact_part)
    if method == "xtrace":
        return _xtrace(sp, gen, max_matvecs, rtol, min_samples, base, k, 5)
    if method == "hutch++":
        return _hutchpp(sp, gen, max_matvecs, rtol, None, min_samples, base, k)
    if method == "hutchinson":
        return _hutchinson(sp, gen, max_matvecs, rtol, min_samples, base, k)
    raise ValueError(f"trace method {method!r} is not accepted; accepted: {', '.join(TRACE_METHODS)}")


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
    """Dispatch to :func:`hutchpp` (default), :func:`hutchinson` or :func:`xtrace` by ``method``."""
    if method == "hutch++":
        return hutchpp(operator, dim, max_matvecs=max_matvecs, rtol=rtol, seed=seed, device=device)
    if method == "hutchinson":
        return hutchinson(operator, dim, max_matvecs=max_matvecs, rtol=rtol, seed=seed, device=device)
    if method == "xtrace":
        return xtrace(operator, dim, max_matvecs=max_matvecs, rtol=rtol, seed=seed, device=device)
    raise ValueError(f"trace method {method!r} is not accepted; accepted: {', '.join(TRACE_METHODS)}")
