"""Lanczos, SLQ and trace estimators against dense float64 eigendecompositions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from landscape.analyses.lanczos import lanczos
from landscape.analyses.slq import default_grid, default_sigma, gaussian_density, slq
from landscape.analyses.trace import estimate_trace, hutchinson, hutchpp


def sym(n, seed=0, eigs=None):
    """A dense symmetric matrix with given (or Gaussian) eigenvalues and a random basis."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    if eigs is None:
        eigs = torch.randn(n, generator=g, dtype=torch.float64)
    return (q * torch.as_tensor(eigs, dtype=torch.float64)) @ q.T


def hessian_like(n, seed=0):
    """A few large outliers, a bulk near zero and some negative eigenvalues, like a trained net."""
    g = torch.Generator().manual_seed(seed)
    bulk = 0.05 * torch.randn(n - 8, generator=g, dtype=torch.float64)
    eigs = torch.cat([torch.tensor([50.0, 31.0, 20.0, 12.0, 9.0, 7.5, -3.0, -1.0], dtype=torch.float64), bulk])
    return sym(n, seed, eigs), torch.sort(eigs).values


def test_full_steps_reproduce_eigvalsh():
    A = sym(60, seed=1)
    res = lanczos(A, k=60, max_steps=60, tol=1e-12)
    assert res.steps == 60
    exact = torch.linalg.eigvalsh(A)
    np.testing.assert_allclose(res.ritz_values, exact.numpy(), rtol=0, atol=1e-12 * float(exact.abs().max()))
    np.testing.assert_allclose(np.sort(res.eigenvalues.numpy()), exact.numpy(), atol=1e-12 * float(exact.abs().max()))


def test_repeated_eigenvalues_restart_after_breakdown():
    # Rank 4 in 40 dimensions: the Krylov space from one vector is invariant after 5 steps.
    eigs = torch.zeros(40, dtype=torch.float64)
    eigs[:4] = torch.tensor([4.0, 3.0, -2.0, 1.0])
    A = sym(40, seed=2, eigs=eigs)
    res = lanczos(A, k=40, max_steps=40, tol=1e-10)
    assert res.restarts >= 1
    np.testing.assert_allclose(res.ritz_values, torch.sort(eigs).values.numpy(), atol=1e-12)


@pytest.mark.parametrize("which", ["LA", "SA", "LM"])
def test_top_k_and_vectors(which):
    A, eigs = hessian_like(300, seed=3)
    res = lanczos(A, k=5, which=which, tol=1e-10, eigenvectors=True, seed=4)
    key = {"LA": -eigs, "SA": eigs, "LM": -eigs.abs()}[which]
    want = eigs[torch.argsort(key, stable=True)[:5]]
    torch.testing.assert_close(res.eigenvalues, want, rtol=1e-9, atol=0)
    assert res.converged.all() and res.steps < 300
    Y = res.eigenvectors
    torch.testing.assert_close(Y @ Y.T, torch.eye(5, dtype=torch.float64), atol=1e-10, rtol=0)
    # The reported residual is the true residual ||A y - theta y||.
    true_res = torch.linalg.vector_norm(Y @ A - res.eigenvalues[:, None] * Y, dim=1)
    torch.testing.assert_close(true_res, res.residuals, atol=1e-9 * 50, rtol=1e-3)
    assert (res.residuals <= 1e-10 * res.eigenvalues.abs()).all()


def test_no_ghost_copies_of_lambda_max():
    # Long runs on a matrix with one dominant eigenvalue are where plain Lanczos grows ghosts.
    eigs = torch.cat([torch.tensor([100.0]), torch.linspace(0, 1, 399)]).double()
    A = sym(400, seed=5, eigs=eigs)
    res = lanczos(A, k=5, tol=1e-14, max_steps=150)
    top = np.sort(res.ritz_values)[::-1][:5]
    assert abs(top[0] - 100) < 1e-10 and np.all(top[1:] < 1.0 + 1e-10)


def test_relative_tolerance_is_scale_invariant():
    A, _ = hessian_like(120, seed=6)
    runs = [lanczos(c * A, k=5, tol=1e-8, seed=1) for c in (1e-8, 1.0, 1e8)]
    assert len({r.steps for r in runs}) == 1
    for c, r in zip((1e-8, 1.0, 1e8), runs):
        torch.testing.assert_close(r.eigenvalues / c, runs[1].eigenvalues, rtol=1e-10, atol=0)


def test_budget_exhausted_is_not_converged():
    A, _ = hessian_like(200, seed=7)
    res = lanczos(A, k=5, tol=1e-12, max_steps=6)
    assert res.steps == 6 and not res.converged.all()


def test_callable_operator_and_errors():
    A = sym(10, seed=8)
    res = lanczos(lambda v: (A @ v).float(), 10, k=2, tol=1e-5)
    torch.testing.assert_close(res.eigenvalues, torch.linalg.eigvalsh(A).flip(0)[:2], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="dimension 10"):
        lanczos(A, k=11)
    with pytest.raises(ValueError, match="accepted: LA, SA, LM"):
        lanczos(A, which="largest")
    with pytest.raises(ValueError, match="square"):
        lanczos(torch.ones(3, 4))
    with pytest.raises(ValueError, match="dim"):
        lanczos(lambda v: v)


def test_slq_quadrature_is_exact_for_low_degree_polynomials():
    A, eigs = hessian_like(80, seed=9)
    m = 12
    nodes, weights = slq(A, runs=3, steps=m, seed=2)
    assert nodes.shape == (3, m)
    torch.testing.assert_close(weights.sum(1), torch.ones(3, dtype=torch.float64))
    # Redraw the same start vectors: Gauss quadrature with m nodes is exact up to degree 2m-1.
    g = torch.Generator().manual_seed(2)
    from landscape.analyses.lanczos import rademacher

    for r in range(3):
        v = rademacher(80, g, torch.device("cpu"))
        v = v / v.norm()
        Av = v.clone()
        for p in range(1, 2 * m):
            Av = A @ Av
            quad = float((weights[r] * nodes[r] ** p).sum())
            exact = float(v @ Av)
            assert abs(quad - exact) <= 1e-9 * 50.0**p, p


def test_slq_density_integrates_to_one_and_matches_moments():
    A, eigs = hessian_like(150, seed=10)
    nodes, weights = slq(A, runs=40, steps=30, seed=3)
    sigma = default_sigma(nodes)
    grid = default_grid(nodes, sigma, points=4000)
    dens = gaussian_density(nodes, weights, grid, sigma)
    assert abs(float(torch.trapezoid(dens, grid)) - 1) < 1e-6
    mean_dens = float(torch.trapezoid(grid * dens, grid))
    mean_quad = float((torch.nan_to_num(nodes) * weights).sum() / 40)
    assert abs(mean_dens - mean_quad) < 1e-6
    var_dens = float(torch.trapezoid((grid - mean_dens) ** 2 * dens, grid))
    m2_quad = float((torch.nan_to_num(nodes) ** 2 * weights).sum() / 40)
    assert abs(var_dens - (m2_quad - mean_quad**2 + sigma**2)) < 1e-5 * m2_quad
    # Against the exact spectral moments tr(A^p)/n: Monte Carlo over 40 probes.
    for p in (1, 2):
        exact = float((eigs**p).mean())
        est = float((torch.nan_to_num(nodes) ** p * weights).sum(1).mean())
        spread = float((torch.nan_to_num(nodes) ** p * weights).sum(1).std() / math.sqrt(40))
        assert abs(est - exact) < 4 * spread + 1e-12


def test_slq_stops_at_breakdown():
    eigs = torch.tensor([1.0] * 10 + [2.0] * 10 + [5.0] * 10, dtype=torch.float64)
    nodes, weights = slq(sym(30, seed=11, eigs=eigs), runs=2, steps=20, seed=0)
    finite = torch.isfinite(nodes).sum(1)
    assert finite.tolist() == [3, 3]
    np.testing.assert_allclose(np.sort(nodes[0, :3].numpy()), [1.0, 2.0, 5.0], atol=1e-12)
    assert torch.all(weights[:, 3:] == 0)


def test_hutchinson_exact_on_diagonal_and_hutchpp_exact_with_full_sketch():
    d = torch.linspace(-2, 7, 50, dtype=torch.float64)
    est = hutchinson(torch.diag(d), max_matvecs=12, seed=1)
    assert abs(est.trace - float(d.sum())) < 1e-12 and est.stderr == 0 and est.matvecs == 10
    A = sym(50, seed=12)
    est = hutchpp(A, max_matvecs=100, sketch=50)
    assert abs(est.trace - float(torch.trace(A))) < 1e-10 and est.matvecs == 100


def test_trace_converges_and_stops_on_standard_error():
    A, eigs = hessian_like(200, seed=13)
    exact = float(eigs.sum())
    errs = {}
    for method in ("hutch++", "hutchinson"):
        for budget in (30, 150):
            e = [abs(estimate_trace(A, method=method, max_matvecs=budget, rtol=None, seed=s).trace - exact) for s in range(8)]
            errs[method, budget] = float(np.mean(e))
    assert errs["hutch++", 150] < errs["hutch++", 30]
    assert errs["hutchinson", 150] < errs["hutchinson", 30]
    assert errs["hutch++", 150] < 0.2 * errs["hutchinson", 150]
    # The standard error is honest (within 4 of it) and the stop rule uses it.
    est = hutchinson(A, max_matvecs=2000, rtol=0.05, seed=0)
    assert est.converged and est.matvecs < 2000 and est.stderr <= 0.05 * abs(est.trace)
    assert abs(est.trace - exact) < 4 * est.stderr
    est = hutchpp(A, max_matvecs=300, rtol=1e-3, seed=0)
    assert est.converged and est.stderr <= 1e-3 * abs(est.trace)
    assert abs(est.trace - exact) < 4 * est.stderr
    with pytest.raises(ValueError, match="accepted: xtrace, hutch\\+\\+, hutchinson"):
        estimate_trace(A, method="exact")
    with pytest.raises(ValueError, match="sketch"):
        hutchpp(A, max_matvecs=10, sketch=6)
