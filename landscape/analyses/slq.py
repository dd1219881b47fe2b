"""Stochastic Lanczos quadrature (SLQ): the spectral density of a symmetric operator.

Ghorbani, Krishnan & Xiao (2019), the method behind SAM's Figure 3 (Hessian spectra at the end of
training): for each of ``runs`` Rademacher start vectors ``v``, ``steps`` Lanczos steps give a
tridiagonal ``T`` with eigenvalues ``theta_i`` (nodes) and first eigenvector components
``tau_i`` (weights ``tau_i^2``, summing to 1). Then

    v^T f(A) v / v^T v  =  sum_i tau_i^2 f(theta_i)     (exact for polynomials of degree <= 2m-1)

and the density is the average over runs of ``sum_i tau_i^2 N(t; theta_i, sigma^2)``. Because
every Gaussian kernel integrates to 1 and the weights of a run sum to 1, the density integrates
to 1; its mean is the quadrature estimate of ``tr(A)/n`` and its variance that of the spectrum
plus ``sigma^2``. The raw nodes and weights are returned so that users can re-smooth.

Lanczos here is the same fully reorthogonalized routine as :mod:`landscape.analyses.lanczos`,
stopped (not restarted) at a breakdown, where the quadrature is already exact.

**Reusing an eigenvalue run** (``first_run=``): a Lanczos run for eigenvalues from a Rademacher
start vector is, up to its first restart, exactly the SLQ run from that vector (same
arithmetic). It becomes run 0: truncated to ``steps`` when it is longer, cut at its first
breakdown (where a separate SLQ run stops too), and continued in place with the remaining steps
when it is shorter - so the density costs ``min(steps, eigenvalue steps)`` matvecs less. It must
not be reused when its start vector was not Rademacher (a user-given ``v0``).

Example:
    >>> import torch
    >>> A = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
    >>> nodes, weights = slq(A, runs=2, steps=4, seed=0)
    >>> float((weights.sum(1) - 1).abs().max()) < 1e-12
    True
    >>> grid = torch.linspace(-1, 6, 701, dtype=torch.float64)
    >>> dens = gaussian_density(nodes, weights, grid, sigma=0.1)
    >>> round(float(torch.trapezoid(dens, grid)), 6)
    1.0
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from landscape.analyses.lanczos import (
    Matvec,
    _Basis,
    _Tridiagonal,
    as_matvec,
    lanczos_tridiagonal,
    rademacher,
)

__all__ = ["default_grid", "default_sigma", "gaussian_density", "quadrature", "slq"]


def quadrature(tri: _Tridiagonal, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss quadrature ``(nodes, weights)`` of the unrestarted leading part of a Lanczos run:
    its first ``steps`` steps, cut after the first breakdown (a zero coupling ``beta``)."""
    m = min(steps, len(tri.alpha))
    if tri.restart_steps:
        m = min(m, tri.restart_steps[0] + 1)
    lead = _Tridiagonal(tri.alpha[:m], tri.beta[:m], tri.tnorm, 0)
    theta, s = lead.eig()
    return theta, s[0, :] ** 2


def slq(
    operator: Matvec | Tensor,
    dim: int | None = None,
    *,
    runs: int = 10,
    steps: int = 90,
    seed: int | torch.Generator = 0,
    device: torch.device | str | None = None,
    first_run: tuple[_Tridiagonal, _Basis] | None = None,
) -> tuple[Tensor, Tensor]:
    """Nodes and weights of stochastic Lanczos quadrature.

    Args:
        operator: symmetric matvec (float64 in) or dense matrix.
        dim: dimension for a callable operator.
        runs: number of Rademacher start vectors (Ghorbani et al.: >= 10).
        steps: Lanczos steps per run (Ghorbani et al. / SAM Fig. 3: about 90; ``hessian_spectrum``
            uses 45, where the broadened density had converged in ``bench/bench_density.py``);
            capped at ``dim``.
        seed: int or CPU ``torch.Generator``.
        device: device of the Lanczos vectors for a callable operator.
        first_run: the state of an earlier Lanczos run of this operator from a Rademacher
            start vector (``lanczos(..., keep_basis=True).state``), reused as run 0 (see the
            module docstring; continued in place when shorter than ``steps``); the other
            ``runs - 1`` starts are drawn from ``seed``.

    Returns:
        ``(nodes, weights)``, float64 CPU tensors of shape ``(runs, steps)``; a run that met an
        invariant subspace early is padded with NaN nodes and zero weights. Each run's weights
        sum to 1. The number of matvecs is ``int(torch.isfinite(nodes).sum())``.
    """
    matvec, n, dev = as_matvec(operator, dim, device)
    if not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs (slq_runs) must be a positive int, got {runs!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps (slq_steps) must be a positive int, got {steps!r}")
    gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))
    m = min(steps, n)
    nodes = torch.full((runs, m), math.nan, dtype=torch.float64)
    weights = torch.zeros((runs, m), dtype=torch.float64)
    for r in range(runs):
        if r == 0 and first_run is not None:
            tri, basis = first_run
            if not tri.restart_steps and len(tri.alpha) < m:
                tri, _ = lanczos_tridiagonal(matvec, basis.rows[0], m, restart_generator=None, resume=first_run)
        else:
            tri, _ = lanczos_tridiagonal(matvec, rademacher(n, gen, dev), m, restart_generator=None)
        theta, w = quadrature(tri, m)
        j = len(theta)
        nodes[r, :j] = torch.from_numpy(theta)
        weights[r, :j] = torch.from_numpy(w)
    return nodes, weights


def default_sigma(nodes: Tensor, fraction: float = 0.01) -> float:
    """A scale-aware broadening width: ``fraction`` of the spread of the finite nodes.

    PyHessian broadens with a variance of ``1e-5 * range`` (a width that does not scale like the
    eigenvalues and gives spiky curves); a fixed fraction of the spectral range is invariant to
    rescaling the loss. Falls back to ``fraction * max|node|`` when all nodes coincide, and to 1
    for an all-zero operator.
    """
    finite = nodes[torch.isfinite(nodes)]
    spread = float(finite.max() - finite.min()) if finite.numel() else 0.0
    if spread > 0:
        return fraction * spread
    scale = float(finite.abs().max()) if finite.numel() else 0.0
    return fraction * scale if scale > 0 else 1.0


def default_grid(nodes: Tensor, sigma: float, points: int = 1000, pad: float = 5.0) -> Tensor:
    """An even grid from ``min(nodes) - pad*sigma`` to ``max(nodes) + pad*sigma`` (so the Gaussian
    tails, and hence the integral, are captured to ``erfc(pad/sqrt(2))``)."""
    finite = nodes[torch.isfinite(nodes)]
    lo = float(finite.min()) - pad * sigma
    hi = float(finite.max()) + pad * sigma
    return torch.linspace(lo, hi, points, dtype=torch.float64)


def gaussian_density(nodes: Tensor, weights: Tensor, grid: Tensor, sigma: float) -> Tensor:
    """``mean_r sum_i w_ri N(grid; node_ri, sigma^2)`` (NaN-padded nodes ignored), float64."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    ok = torch.isfinite(nodes)
    th = torch.where(ok, nodes, torch.zeros_like(nodes)).reshape(-1)
    w = torch.where(ok, weights, torch.zeros_like(weights)).reshape(-1)
    g = grid.to(torch.float64)
    runs = nodes.shape[0]
    # Chunk over the grid so the (grid, nodes) kernel matrix stays small.
    out = torch.empty_like(g)
    norm = 1.0 / (sigma * np.sqrt(2.0 * np.pi) * runs)
    for s in range(0, g.numel(), 4096):
        d = (g[s : s + 4096, None] - th[None, :]) / sigma
        out[s : s + 4096] = norm * (torch.exp(-0.5 * d * d) @ w)
    return out
