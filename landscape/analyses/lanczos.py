"""Lanczos for symmetric operators: extreme eigenpairs from matrix-vector products alone.

Works on any symmetric ``matvec`` (a Hessian-vector product, a dense tensor, ...). Design choices,
each guarding against a failure measured in other tools (see ``REFERENCES.md``, "Hessian"):

* **Full reorthogonalization, always**: every new Lanczos vector is orthogonalized twice (classical
  Gram-Schmidt, "twice is enough") against all previous ones. Without it, ghost copies of
  lambda_max appear and are reported as converged (hessian-eigenthings returned five copies of
  lambda_1 this way).
* The tridiagonal matrix is kept in float64 and solved with ``scipy.linalg.eigh_tridiagonal``;
  the Lanczos vectors are float64 too, whatever the operator's dtype.
* **Stopping on Ritz residuals**: Ritz pair ``(theta_i, y_i)`` of step ``m`` has residual
  ``||A y_i - theta_i y_i|| = |beta_m s_{m,i}|`` (``s_{m,i}``: last component of the i-th
  eigenvector of ``T_m``). Lanczos stops when every wanted pair has ``|beta_m s_{m,i}| <= tol
  |theta_i|``; the eigenvalue error is at most the residual (and about ``residual^2 / gap``).
* **No absolute epsilons**: breakdown (an invariant Krylov subspace) is detected by ``beta <=
  n * eps * ||T||`` relative to the running estimate of ``||T||``. On breakdown, eigenvalue
  computations continue from a fresh random vector orthogonal to the basis (needed when the
  operator has repeated eigenvalues, like the many zero eigenvalues of a Hessian); quadrature
  (SLQ) stops there, where it is exact.
* ``which`` = "LA" (largest algebraic, the default for lambda_max), "SA" (smallest algebraic:
  trained networks have negative eigenvalues) or "LM" (largest magnitude).

Example:
    >>> import torch
    >>> A = torch.diag(torch.arange(1.0, 51.0, dtype=torch.float64))
    >>> res = lanczos(A, k=3, tol=1e-10)
    >>> [round(x, 6) for x in res.eigenvalues.tolist()]
    [50.0, 49.0, 48.0]
    >>> bool(res.converged.all())
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from torch import Tensor

__all__ = ["LanczosResult", "as_matvec", "lanczos", "lanczos_tridiagonal", "rademacher", "WHICH"]

WHICH = ("LA", "SA", "LM")
Matvec = Callable[[Tensor], Tensor]


def as_matvec(
    operator: Matvec | Tensor, dim: int | None = None, device: torch.device | str | None = None
) -> tuple[Matvec, int, torch.device]:
    """Normalize ``operator`` (a callable or a dense symmetric matrix) to ``(matvec, dim, device)``.

    The returned ``matvec`` takes and returns float64 vectors on ``device``.
    """
    if isinstance(operator, Tensor):
        if operator.ndim != 2 or operator.shape[0] != operator.shape[1]:
            raise ValueError(f"a dense operator must be a square matrix, got shape {tuple(operator.shape)}")
        if dim is not None and dim != operator.shape[0]:
            raise ValueError(f"dim={dim} does not match the matrix size {operator.shape[0]}")
        mat = operator.to(torch.float64)
        return (lambda v: mat @ v), int(mat.shape[0]), mat.device
    if not callable(operator):
        raise TypeError(f"operator must be a callable matvec or a square tensor, got {type(operator).__name__}")
    if dim is None or dim < 1:
        raise ValueError(f"a callable operator needs its dimension: dim={dim!r}")
    dev = torch.device(device) if device is not None else torch.device("cpu")

    def matvec(v: Tensor) -> Tensor:
        return operator(v).to(device=dev, dtype=torch.float64)

    return matvec, int(dim), dev


def rademacher(n: int, generator: torch.Generator, device: torch.device, count: int | None = None) -> Tensor:
    """Rademacher (+-1) float64 vector(s), drawn on the CPU from ``generator`` (reproducible on
    any device), shape ``(n,)`` or ``(count, n)``."""
    shape = (n,) if count is None else (count, n)
    r = torch.randint(0, 2, shape, generator=generator, dtype=torch.int8)
    return (2.0 * r.to(torch.float64) - 1.0).to(device)


class _Basis:
    """Lanczos vectors as rows of a float64 matrix that grows by doubling."""

    def __init__(self, n: int, device: torch.device, capacity: int) -> None:
        self.q = torch.empty(max(1, capacity), n, dtype=torch.float64, device=device)
        self.size = 0
        self.residual: Tensor | None = None  # the orthogonalized w of the last step (next vector * beta)

    def append(self, v: Tensor) -> None:
        if self.size == self.q.shape[0]:
            grown = torch.empty(2 * self.size, self.q.shape[1], dtype=self.q.dtype, device=self.q.device)
            grown[: self.size] = self.q
            self.q = grown
        self.q[self.size] = v
        self.size += 1

    @property
    def rows(self) -> Tensor:
        return self.q[: self.size]

    def orthogonalize(self, w: Tensor) -> Tensor:
        # Classical Gram-Schmidt twice ("twice is enough", Giraud et al. 2005): orthogonal to
        # working precision even when w has lost most of its norm.
        q = self.rows
        for _ in range(2):
            w = w - q.T @ (q @ w)
        return w


@dataclass
class _Tridiagonal:
    alpha: list[float]
    beta: list[float]  # beta[j] couples Lanczos vectors j and j+1; len(beta) == len(alpha)
    tnorm: float
    restarts: int
    restart_steps: list[int] = field(default_factory=list)

    def eig(self, vectors: bool = True):
        d = np.asarray(self.alpha, dtype=np.float64)
        e = np.asarray(self.beta[: len(d) - 1], dtype=np.float64)
        if vectors:
            return eigh_tridiagonal(d, e)
        return eigh_tridiagonal(d, e, eigvals_only=True), None


def lanczos_tridiagonal(
    matvec: Matvec,
    v0: Tensor,
    max_steps: int,
    *,
    restart_generator: torch.Generator | None = None,
    stop: Callable[[_Tridiagonal], bool] | None = None,
    resume: tuple[_Tridiagonal, _Basis] | None = None,
) -> tuple[_Tridiagonal, _Basis]:
    """Run up to ``max_steps`` Lanczos steps from ``v0`` with full reorthogonalization.

    Args:
        matvec: float64 vector -> float64 vector, symmetric.
        v0: start vector (normalized here).
        max_steps: at most this many matvecs (and at most the dimension), counting the steps
            of ``resume``.
        restart_generator: on breakdown, continue from a random vector orthogonal to the basis
            (eigenvalue problems); ``None``: stop at breakdown (quadrature, where it is exact).
        stop: called after each step with the tridiagonal so far; ``True`` stops.
        resume: ``(tri, basis)`` of an earlier call from the same ``v0``, continued in place
            with the same arithmetic as one uninterrupted run (nothing is run when its last
            step was a breakdown).

    Returns:
        The tridiagonal (alpha, beta; ``beta[-1]`` is the coupling to the next, unformed vector
        and enters the Ritz residuals) and the basis.
    """
    n = v0.numel()
    max_steps = min(max_steps, n)
    eps = float(torch.finfo(torch.float64).eps)
    if resume is not None:
        tri, basis = resume
        start = len(tri.alpha)
        if start >= max_steps or basis.residual is None or tri.beta[-1] <= n * eps * tri.tnorm:
            return tri, basis
        q = basis.residual / tri.beta[-1]
    else:
        basis = _Basis(n, v0.device, min(max_steps, 64))
        tri = _Tridiagonal([], [], 0.0, 0)
        nrm = torch.linalg.vector_norm(v0)
        if not torch.isfinite(nrm) or nrm == 0:
            raise ValueError("the Lanczos start vector is zero or not finite")
        q = v0.to(torch.float64) / nrm
        start = 0
    for j in range(start, max_steps):
        basis.append(q)
        w = matvec(q)
        if not torch.isfinite(w).all():
            raise FloatingPointError(
                f"the operator returned a non-finite product at Lanczos step {j + 1} (NaN/inf in the model's HVP?)"
            )
        alpha = float(q @ w)
        w = basis.orthogonalize(w)  # removes alpha*q_j and beta*q_{j-1} too
        beta = float(torch.linalg.vector_norm(w))
        tri.alpha.append(alpha)
        tri.beta.append(beta)
        prev = tri.beta[-2] if len(tri.beta) > 1 else 0.0
        tri.tnorm = max(tri.tnorm, abs(alpha) + beta + prev)
        basis.residual = w
        if stop is not None and stop(tri):
            break
        if j + 1 == max_steps:
            break
        if beta <= n * eps * tri.tnorm:
            if restart_generator is None:
                break
            # Invariant subspace found: record a zero coupling and continue in its complement.
            tri.beta[-1] = 0.0
            tri.restarts += 1
            tri.restart_steps.append(j)
            r = basis.orthogonalize(rademacher(n, restart_generator, v0.device))
            rn = torch.linalg.vector_norm(r)
            if rn <= n * eps * np.sqrt(n):
                break
            q = r / rn
        else:
            q = w / beta
    return tri, basis


def _order(theta: np.ndarray, which: str) -> np.ndarray:
    if which == "LA":
        return np.argsort(-theta, kind="stable")
    if which == "SA":
        return np.argsort(theta, kind="stable")
    return np.argsort(-np.abs(theta), kind="stable")


@dataclass
class LanczosResult:
    """Ritz approximations of the ``k`` wanted eigenpairs.

    Attributes:
        eigenvalues: ``(k,)`` float64, ordered by ``which`` (LA: descending; SA: ascending;
            LM: descending magnitude).
        eigenvectors: ``(k, n)`` float64 unit Ritz vectors (on the operator's device) or None.
        residuals: ``(k,)`` Ritz residual norms ``|beta_m s_{m,i}|`` (bounds on the eigenvalue error).
        converged: ``(k,)`` bool, ``residual <= tol * |eigenvalue|``.
        steps: Lanczos steps = matvecs spent.
        restarts: breakdowns continued with a fresh orthogonal vector.
        ritz_values: all Ritz values of the final tridiagonal (ascending).
        alpha, beta: the tridiagonal (float64 numpy arrays).
        basis: ``(steps, n)`` float64 orthonormal Lanczos vectors (rows; on the operator's
            device) when asked for (``keep_basis=True``), else None. With ``T`` the tridiagonal,
            ``basis @ A @ basis.T = T`` and ``tr(basis @ A @ basis.T) = sum(alpha)`` exactly:
            a free deflation space for trace estimation
            (:func:`~landscape.analyses.trace.deflated_trace`).
        restart_steps: the steps after which a breakdown was continued from a fresh vector
            (``beta[j] == 0``); the first ``restart_steps[0] + 1`` steps (all steps when none)
            are an unrestarted run from the start vector, i.e. a valid SLQ run.
        state: the internal ``(tridiagonal, basis)`` to continue the run with
            ``lanczos_tridiagonal(..., resume=state)`` (only with ``keep_basis=True``).
    """

    eigenvalues: Tensor
    eigenvectors: Tensor | None
    residuals: Tensor
    converged: Tensor
    steps: int
    restarts: int
    ritz_values: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    basis: Tensor | None = None
    restart_steps: tuple[int, ...] = ()
    state: tuple[_Tridiagonal, _Basis] | None = None


def lanczos(
    operator: Matvec | Tensor,
    dim: int | None = None,
    *,
    k: int = 5,
    which: str = "LA",
    tol: float = 1e-6,
    max_steps: int | None = None,
    v0: Tensor | None = None,
    seed: int | torch.Generator = 0,
    eigenvectors: bool = False,
    device: torch.device | str | None = None,
    keep_basis: bool = False,
) -> LanczosResult:
    """``k`` extreme eigenpairs of a symmetric operator by Lanczos with full reorthogonalization.

    Args:
        operator: a callable ``v -> A v`` (float64 vectors in, any float dtype out) or a dense
            symmetric matrix.
        dim: the dimension (needed for a callable).
        k: number of wanted eigenpairs (``1 <= k <= dim``).
        which: "LA" largest algebraic, "SA" smallest algebraic, "LM" largest magnitude.
        tol: relative Ritz-residual tolerance: stop when ``|beta_m s_{m,i}| <= tol |theta_i|``
            for all ``k`` wanted pairs.
        max_steps: budget of matvecs (default ``min(dim, max(20 * k, 100))``); with
            ``max_steps == dim`` the final Ritz values are all eigenvalues of the operator.
        v0: start vector (default Rademacher from ``seed``).
        seed: an int or a ``torch.Generator`` (CPU) for the start and restart vectors.
        eigenvectors: also return the Ritz vectors.
        device: where the Lanczos vectors live for a callable operator (default CPU).
        keep_basis: also return the Lanczos basis (``steps x n`` floats) and the state to
            continue the run.

    Returns:
        :class:`LanczosResult`; pairs that did not reach ``tol`` within ``max_steps`` are
        marked ``converged=False`` (never silently reported as converged).

    Example:
        >>> import torch
        >>> A = torch.diag(torch.tensor([-3.0, 1.0, 2.0], dtype=torch.float64))
        >>> round(float(lanczos(A, k=1, which="LM").eigenvalues[0]), 10)
        -3.0
    """
    if which not in WHICH:
        raise ValueError(f"which={which!r} is not accepted; accepted: {', '.join(WHICH)}")
    matvec, n, dev = as_matvec(operator, dim, device)
    if not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k={k!r} eigenpairs requested but the operator has dimension {n}; need 1 <= k <= {n}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
    if max_steps is None:
        max_steps = min(n, max(20 * k, 100))
    if not isinstance(max_steps, int) or max_steps < k:
        raise ValueError(f"max_steps={max_steps!r} must be an int >= k={k}")
    gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))
    if v0 is None:
        v0 = rademacher(n, gen, dev)
    elif v0.shape != (n,):
        raise ValueError(f"v0 must have shape ({n},), got {tuple(v0.shape)}")
    eps = float(torch.finfo(torch.float64).eps)

    def wanted(tri: _Tridiagonal):
        theta, s = tri.eig()
        idx = _order(theta, which)[:k]
        res = np.abs(tri.beta[-1] * s[-1, idx])
        ok = (res <= tol * np.abs(theta[idx])) | (res <= n * eps * tri.tnorm)
        return theta, s, idx, res, ok

    def stop(tri: _Tridiagonal) -> bool:
        return len(tri.alpha) >= k and bool(wanted(tri)[4].all())

    tri, basis = lanczos_tridiagonal(matvec, v0.to(device=dev, dtype=torch.float64), max_steps,
                                     restart_generator=gen, stop=stop)
    m = len(tri.alpha)
    if m < k:  # the whole space was exhausted in fewer steps than k (cannot happen for k <= n)
        raise RuntimeError(f"Lanczos stopped after {m} steps, fewer than k={k}")
    theta, s, idx, res, ok = wanted(tri)
    vecs = None
    if eigenvectors:
        vecs = torch.as_tensor(s[:, idx].T.copy(), dtype=torch.float64, device=dev) @ basis.rows
        vecs = vecs / torch.linalg.vector_norm(vecs, dim=1, keepdim=True)
    return LanczosResult(
        eigenvalues=torch.as_tensor(theta[idx].copy(), dtype=torch.float64),
        eigenvectors=vecs,
        residuals=torch.as_tensor(res, dtype=torch.float64),
        converged=torch.as_tensor(ok),
        steps=m,
        restarts=tri.restarts,
        ritz_values=theta,
        alpha=np.asarray(tri.alpha),
        beta=np.asarray(tri.beta),
        basis=basis.rows if keep_basis else None,
        restart_steps=tuple(tri.restart_steps),
        state=(tri, basis) if keep_basis else None,
    )
