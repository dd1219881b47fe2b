"""XTrace, deflated trace estimation and the reuse of the eigenvalue Lanczos run as an SLQ run,
against dense float64 truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference
import torch

from landscape.analyses.hessian import hessian_spectrum
from landscape.analyses.lanczos import lanczos
from landscape.analyses.slq import slq
from landscape.analyses.trace import deflated_trace, hutchinson, xtrace


def sym(n, eigs, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return (q * torch.as_tensor(eigs, dtype=torch.float64)) @ q.T


def psd(n=150, seed=0):
    return sym(n, 1.0 / torch.arange(1, n + 1, dtype=torch.float64) ** 1.5, seed)


def indefinite(n=150, seed=1):
    g = torch.Generator().manual_seed(seed)
    eigs = 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    eigs[:6] = torch.tensor([40.0, 25.0, 12.0, -8.0, 5.0, -3.0])
    return sym(n, eigs, seed)


def rel_errors(fn, A, seeds):
    exact = float(torch.trace(A))
    return np.array([abs(fn(A, s).trace - exact) / abs(exact) for s in seeds])


@pytest.mark.parametrize("make", [psd, indefinite])
def test_xtrace_beats_hutchinson_and_its_error_estimate_is_honest(make):
    A = make()
    exact = float(torch.trace(A))
    ests = [xtrace(A, max_matvecs=40, rtol=None, seed=s) for s in range(20)]
    assert all(e.matvecs == 40 and len(e.samples) == 20 for e in ests)
    err_x = np.mean([abs(e.trace - exact) for e in ests])
    err_h = np.mean([abs(hutchinson(A, max_matvecs=40, rtol=None, seed=s).trace - exact) for s in range(20)])
    assert err_x < 0.5 * err_h
    # The spread of the exchangeable estimates is an error estimate: z-scores of order 1, and the
    # mean over seeds is unbiased within its own standard error.
    z = np.array([(e.trace - exact) / e.stderr for e in ests])
    assert 0.3 < np.sqrt(np.mean(z**2)) < 3
    t = np.array([e.trace for e in ests])
    assert abs(t.mean() - exact) < 4 * t.std(ddof=1) / math.sqrt(len(t))


def test_xtrace_exact_cases_and_early_stop():
    A = indefinite(40)
    # Low rank (rank 6 < 20 test vectors): the sketch captures the range, the estimate is exact.
    U = sym(60, torch.ones(60), seed=3)[:, :6]
    L = U @ torch.diag(torch.tensor([5.0, -4.0, 3.0, 2.0, -1.0, 0.5], dtype=torch.float64)) @ U.T
    est = xtrace(L, max_matvecs=40, rtol=None, seed=0)
    assert abs(est.trace - float(torch.trace(L))) < 1e-10
    # A budget that spans the space computes the trace exactly, with dim matvecs.
    est = xtrace(A, max_matvecs=80, seed=0)
    assert abs(est.trace - float(torch.trace(A))) < 1e-10 and est.matvecs == 40 and est.stderr == 0
    # The standard-error stop, block by block: fewer matvecs than the budget.
    B = psd(300)
    est = xtrace(B, max_matvecs=200, rtol=1e-2, seed=0)
    assert est.converged and est.matvecs < 200 and est.stderr <= 1e-2 * abs(est.trace)
    assert [h[0] for h in est.history] == list(range(20, est.matvecs + 1, 10))
    with pytest.raises(ValueError, match="max_matvecs >= 2"):
        xtrace(B, max_matvecs=1)


def test_xtrace_matches_curvlinops_reference():
    curvlinops = pytest.importorskip("curvlinops")
    A = psd(200, seed=4)
    ours = rel_errors(lambda A, s: xtrace(A, max_matvecs=40, rtol=None, seed=s), A, range(20))
    exact = float(torch.trace(A))
    theirs = []
    for s in range(20):
        torch.manual_seed(s)  # curvlinops draws from the global RNG
        theirs.append(abs(float(curvlinops.xtrace(A, 40)) - exact) / exact)
    # Same estimator up to the distribution of the test vectors: the same accuracy.
    assert 0.5 < ours.mean() / np.mean(theirs) < 2


def test_xtrace_on_a_dense_hessian_of_a_tiny_model():
    model = reference.tiny_bn_cnn(5).double()
    x, y = reference.data(30, (1, 5, 5), dtype=torch.float64)
    f = reference.reference_loss(model, x, y)
    H = torch.autograd.functional.hessian(f, reference.flat_params(model))  # reverse-over-reverse
    errs = rel_errors(lambda A, s: xtrace(A, max_matvecs=40, rtol=None, seed=s), H, range(10))
    errs_h = rel_errors(lambda A, s: hutchinson(A, max_matvecs=40, rtol=None, seed=s), H, range(10))
    assert errs.mean() < errs_h.mean()
    # Through the analysis: the default (Lanczos basis, extended by a third of the budget, then
    # Hutchinson on the remainder) against the dense trace.
    res = [hessian_spectrum(model, (x, y), top_k=3, trace_samples=40, density=False, seed=s, progress=False)
           for s in range(2)]
    for r in res:
        assert abs(float(r.trace) - float(torch.trace(H))) < 5 * float(r.trace_stderr) + 1e-9
        assert r.attrs["trace_deflation_rank"] == r.attrs["lanczos_steps"] + 40 // 3
        assert int(r.hvps.sel(part="trace")) <= 40


@pytest.mark.parametrize("method", ["xtrace", "hutch++", "hutchinson"])
def test_deflated_trace_is_exact_on_a_matrix_of_rank_at_most_k(method):
    n, k = 120, 7
    Q = sym(n, torch.ones(n), seed=5)[:, :k]  # orthonormal columns
    A = Q[:, :5] @ torch.diag(torch.tensor([9.0, -4.0, 3.0, 1.0, 0.5], dtype=torch.float64)) @ Q[:, :5].T
    B = Q.T  # rank A = 5 <= k = 7, range(A) inside span(B)
    exact_part = float(torch.trace(B @ A @ B.T))
    est = deflated_trace(A, B, exact_part, method=method, max_matvecs=30, rtol=None, seed=0)
    assert abs(est.trace - float(torch.trace(A))) < 1e-12 and est.deflation == k
    # And with the basis a Lanczos run builds itself (breakdown after rank + 1 steps, restarts).
    res = lanczos(A, k=5, tol=1e-12, max_steps=12, keep_basis=True)
    torch.testing.assert_close(res.basis @ res.basis.T, torch.eye(res.steps, dtype=torch.float64), atol=1e-12, rtol=0)
    assert abs(float(res.alpha.sum()) - float(torch.trace(res.basis @ A @ res.basis.T))) < 1e-12
    est = deflated_trace(A, res.basis, float(res.alpha.sum()), method=method, max_matvecs=30, rtol=None, seed=1)
    assert abs(est.trace - float(torch.trace(A))) < 1e-10


def test_deflated_trace_unbiased_and_better_than_plain():
    A = psd(200, seed=6)  # a slowly decaying spectrum: deflation by the Krylov basis pays
    exact = float(torch.trace(A))
    res = lanczos(A, k=3, tol=1e-3, keep_basis=True, seed=2)
    est = [deflated_trace(A, res.basis, float(res.alpha.sum()), max_matvecs=30, rtol=None, seed=s) for s in range(20)]
    plain = [xtrace(A, max_matvecs=30, rtol=None, seed=s) for s in range(20)]
    err_d = np.mean([abs(e.trace - exact) for e in est])
    assert err_d < 0.5 * np.mean([abs(e.trace - exact) for e in plain])
    t = np.array([e.trace for e in est])
    assert abs(t.mean() - exact) < 4 * t.std(ddof=1) / math.sqrt(20) + 1e-12
    with pytest.raises(ValueError, match="accepted: xtrace"):
        deflated_trace(A, res.basis, 0.0, method="exact")
    with pytest.raises(ValueError, match="shape"):
        deflated_trace(A, res.basis[:, :10], 0.0)


@pytest.mark.parametrize("eig_steps", [6, 30])
def test_reused_lanczos_run_is_the_slq_run_from_its_start_vector(eig_steps):
    A = psd(100, seed=7)
    steps = 15
    separate = slq(A, runs=3, steps=steps, seed=11)
    # Lanczos draws its start vector first from the same generator: run 0 of `separate`.
    run = lanczos(A, k=eig_steps, tol=1e-15, max_steps=eig_steps, seed=11, keep_basis=True)
    assert run.steps == eig_steps
    g = torch.Generator().manual_seed(11)
    torch.randint(0, 2, (100,), generator=g, dtype=torch.int8)  # skip the draw run 0 used
    nodes, weights = slq(A, runs=3, steps=steps, seed=g, first_run=run.state)
    torch.testing.assert_close(nodes, separate[0], rtol=0, atol=1e-12)  # shorter: continued; longer: truncated
    torch.testing.assert_close(weights, separate[1], rtol=0, atol=1e-12)


def test_reuse_after_a_restart_is_cut_at_the_breakdown():
    eigs = torch.tensor([1.0] * 10 + [2.0] * 10 + [5.0] * 10, dtype=torch.float64)
    A = sym(30, eigs, seed=8)
    run = lanczos(A, k=5, tol=1e-14, max_steps=10, seed=3, keep_basis=True)
    assert run.restarts >= 1 and run.restart_steps[0] == 2
    separate = slq(A, runs=1, steps=8, seed=3)
    nodes, weights = slq(A, runs=1, steps=8, first_run=run.state)
    torch.testing.assert_close(nodes, separate[0], equal_nan=True, atol=1e-12, rtol=0)
    torch.testing.assert_close(weights, separate[1], atol=1e-12, rtol=0)
    assert int(torch.isfinite(nodes).sum()) == 3


def test_hessian_spectrum_trace_options_and_reuse_flag():
    model = reference.tiny_mlp(6).double()
    x, y = reference.data(20, (6,), dtype=torch.float64)
    H = torch.autograd.functional.hessian(reference.reference_loss(model, x, y), reference.flat_params(model))
    exact = float(torch.trace(H))
    kw = dict(top_k=3, trace_samples=20, trace_rtol=0.0, slq_runs=2, slq_steps=12, progress=False, seed=1)
    for method, deflation in [("xtrace", "ritz"), ("hutch++", "none"), ("hutchinson", "lanczos"), ("xtrace", "none")]:
        r = hessian_spectrum(model, (x, y), trace_method=method, trace_deflation=deflation, **kw)
        assert abs(float(r.trace) - exact) < 6 * float(r.trace_stderr) + 1e-9, (method, deflation)
        assert r.attrs["trace_deflation_rank"] == {"ritz": 3, "none": 0, "lanczos": r.attrs["lanczos_steps"] + 6}[deflation]
    on = hessian_spectrum(model, (x, y), **kw)
    off = hessian_spectrum(model, (x, y), slq_reuse=False, **kw)
    assert off.attrs["slq_reused_steps"] == 0 and on.attrs["slq_reused_steps"] == 12
    # The density is the same with the trace off (its Krylov steps are the same Lanczos steps).
    notr = hessian_spectrum(model, (x, y), trace=False, **kw)
    np.testing.assert_allclose(notr.slq_nodes.values, on.slq_nodes.values, rtol=0, atol=1e-12)
    assert int(off.hvps.sel(part="density")) - int(on.hvps.sel(part="density")) == 12
    # Turning the density off leaves the trace unchanged (the deflation basis is the eigenvalue run's).
    nod = hessian_spectrum(model, (x, y), density=False, **kw)
    assert float(nod.trace) == float(on.trace)
