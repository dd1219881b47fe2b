"""Auto-PGD in weight space against closed forms, brute force and a scripted run."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
import torch

from landscape.analyses.apgd import apgd, checkpoints, project


def quadratic(A, b):
    return lambda d: (0.5 * d @ A @ d + b @ d, A @ d + b)


def recording(fn, scale, norm):
    """Wrap ``fn`` to record ||T^-1 delta||_p (frozen coordinates must stay at 0) of each query."""
    seen = []
    free = scale > 0

    def wrapped(d):
        assert torch.all(d[~free] == 0), "a frozen coordinate moved"
        u = d[free] / scale[free]
        seen.append(float(torch.linalg.vector_norm(u, ord=math.inf if norm == "linf" else 2)))
        return fn(d)

    return wrapped, seen


def trust_region_max(A, b, rho):
    """max 0.5 d'Ad + b'd over ||d||_2 <= rho for PSD A: d = (lam I - A)^-1 b, ||d|| = rho,
    lam > lam_max(A) (the global-maximum condition), found by bisection on the secular equation."""
    lam, Q = torch.linalg.eigh(A)
    c = Q.T @ b
    lo, hi = float(lam[-1]), float(lam[-1]) + float(b.norm()) / rho + 1.0
    for _ in range(300):
        mid = 0.5 * (lo + hi)
        if float(torch.linalg.vector_norm(c / (mid - lam))) > rho:
            lo = mid
        else:
            hi = mid
    d = Q @ (c / (hi - lam))
    return float(0.5 * d @ A @ d + b @ d)


def random_psd(p, gen):
    M = torch.randn(p, p, generator=gen)
    return M @ M.T / p


# ---------------------------------------------------------------- schedule


def test_checkpoints_match_exact_rational_schedule():
    for n in range(1, 201):
        ps, prev, p = [], Fraction(0), Fraction(22, 100)
        while p <= 1:
            ps.append(p)
            prev, p = p, p + max(p - prev - Fraction(3, 100), Fraction(6, 100))
        expected = sorted({math.ceil(q * n) for q in ps})
        assert checkpoints(n) == expected, n
    # float arithmetic would give 15 for p = 0.70 at n = 20 (REFERENCES.md "Sharpness")
    assert checkpoints(20) == [5, 9, 12, 14, 16, 18, 19, 20]


def test_scripted_run_follows_conditions_one_and_two_and_restarts_from_best(f64):
    # fn ignores delta: values and gradients are scripted, so every halving is predictable.
    values = [10, 1, 2, 3, 4, 5, 11, 12, 11.5, 13, 14, 15, 16, 17, 18, 1, 2, 19, 20, 0, 3]
    gen = torch.Generator().manual_seed(3)
    grads = [torch.randn(4, generator=gen) for _ in values]
    queries = []

    def fn(d):
        queries.append(d.clone())
        i = len(queries) - 1
        return torch.tensor(float(values[i])), grads[i]

    rho = 0.5
    res = apgd(fn, torch.ones(4), rho=rho, norm="linf", steps=20)
    # Checkpoints 5, 9, 12, 14, 16, 18, 19. At 5: 4 increases of 5 (cond 1 false) but the best
    # (10, the start) did not improve -> cond 2 halves. At 9: 3 of 4 increases (compared with the
    # best value the run went back to), exactly 75% -> cond 1 halves. At 12: 3 of 3, halved last
    # time -> keep. At 14: 2 of 2, improved -> keep. At 16: 1 of 2 -> halve. At 18: keep. At 19:
    # 0 of 1 -> halve.
    expected = [math.nan] + [2.0] * 5 + [1.0] * 4 + [0.5] * 7 + [0.25] * 3 + [0.125]
    torch.testing.assert_close(res.step_sizes, rho * torch.tensor(expected), equal_nan=True)
    assert res.num_halvings == 4
    assert res.num_evals == 21 and len(queries) == 21
    assert res.value == 20.0 and res.start_value == 10.0
    # On halving the run restarts from the best point with ITS gradient, with a plain projected
    # step of the halved size: after 5 from the start, after 16 from iterate 14 (value 18).
    torch.testing.assert_close(queries[6], project(rho * torch.sign(grads[0]), rho, "linf"))
    torch.testing.assert_close(queries[10], project(queries[9] + 0.5 * rho * torch.sign(grads[9]), rho, "linf"))
    torch.testing.assert_close(queries[17], project(queries[14] + 0.25 * rho * torch.sign(grads[14]), rho, "linf"))
    torch.testing.assert_close(res.delta, queries[18])
    assert torch.all(res.history[1:] >= res.history[:-1])
    torch.testing.assert_close(res.history, torch.cummax(torch.tensor(values, dtype=torch.float64), 0).values)


# ---------------------------------------------------------------- closed-form maxima


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("rho", [0.05, 0.5, 3.0])
def test_l2_ball_reaches_trust_region_maximum(f64, adaptive, rho):
    gen = torch.Generator().manual_seed(0)
    p = 12
    A, b = random_psd(p, gen), torch.randn(p, generator=gen)
    T = torch.rand(p, generator=gen) + 0.2 if adaptive else torch.ones(p)
    if adaptive:
        T[[2, 7]] = 0.0  # exactly-zero weights: frozen coordinates
    free = T > 0
    # In u = T^-1 delta the problem is a trust-region problem with A' = TAT, b' = Tb on the free set.
    Tf = T[free]
    gt = trust_region_max(Tf[:, None] * A[free][:, free] * Tf[None, :], Tf * b[free], rho)
    fn, seen = recording(quadratic(A, b), T, "l2")
    res = apgd(fn, T, rho=rho, norm="l2", steps=40)
    assert res.value == pytest.approx(gt, rel=1e-3)
    assert res.value <= gt * (1 + 1e-12)
    assert max(seen) <= rho * (1 + 1e-12)
    assert res.constraint_norm == pytest.approx(rho, rel=1e-9)  # convex: the max is on the boundary
    assert torch.all(res.delta[~free] == 0) and torch.isfinite(res.delta).all()


def test_adaptive_l2_matches_brute_force_on_the_ellipse(f64):
    # 2-D, independent of the change of variables: sample the boundary of
    # {||T^-1 d||_2 <= rho} (the max of a convex function is there) on a fine angular grid.
    A = torch.tensor([[2.0, 0.6], [0.6, 0.3]])
    b = torch.tensor([0.3, -1.0])
    T = torch.tensor([0.5, 2.0])
    rho = 0.7
    t = torch.linspace(0, 2 * math.pi, 1_000_001)
    d = torch.stack([rho * T[0] * torch.cos(t), rho * T[1] * torch.sin(t)], 1)
    gt = float((0.5 * ((d @ A) * d).sum(1) + d @ b).max())
    res = apgd(quadratic(A, b), T, rho=rho, norm="l2", steps=40)
    assert res.value == pytest.approx(gt, rel=1e-3)
    assert res.value <= gt + 1e-9


@pytest.mark.parametrize("adaptive", [False, True])
def test_linf_box_separable_mixed_curvature_closed_form(f64, adaptive):
    # f = sum 0.5 a_i d_i^2 + b_i d_i over |d_i| <= rho T_i. Convex coordinates (a_i >= 0) peak at
    # a vertex; concave ones (a_i < 0) at the interior point -b_i/a_i when it is inside.
    gen = torch.Generator().manual_seed(1)
    p = 16
    a = torch.randn(p, generator=gen) * 3
    b = torch.randn(p, generator=gen)
    T = torch.rand(p, generator=gen) + 0.5 if adaptive else torch.ones(p)
    if adaptive:
        T[4] = 0.0
    rho = 0.4
    r = rho * T
    cand = torch.stack([r, -r, torch.where(a < 0, (-b / a).clamp(-r, r), r)])
    gt = float((0.5 * a * cand**2 + b * cand).max(0).values.sum())
    fn, seen = recording(lambda d: ((0.5 * a * d**2 + b * d).sum(), a * d + b), T, "linf")
    res = apgd(fn, T, rho=rho, norm="linf", steps=60)
    assert res.value == pytest.approx(gt, rel=1e-3)
    assert res.value <= gt + 1e-12
    assert max(seen) <= rho * (1 + 1e-12)  # (T u) / T rounds by an ulp
    assert res.delta[4 if adaptive else 0].abs() <= rho * T[4 if adaptive else 0]


def test_linf_box_convex_quadratic_vertex_enumeration(f64):
    # A convex function peaks at a vertex of the box: enumerate all 2^8 of them. Non-separable
    # box maximization is NP-hard in general (it contains max-cut) and APGD is a local method:
    # one run must end at a local-maximum vertex (every coordinate at the bound its gradient
    # points to); random restarts must find the global vertex on most instances.
    hits = 0
    for seed in range(2, 8):
        gen = torch.Generator().manual_seed(seed)
        p = 8
        A, b = random_psd(p, gen), torch.randn(p, generator=gen)
        T = torch.rand(p, generator=gen) + 0.5
        rho = 0.3
        V = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=p))) * rho * T
        gt = float((0.5 * ((V @ A) * V).sum(1) + V @ b).max())
        one = apgd(quadratic(A, b), T, rho=rho, norm="linf", steps=20)
        torch.testing.assert_close(one.delta.abs(), rho * T)
        assert torch.equal(torch.sign(A @ one.delta + b), torch.sign(one.delta))
        assert one.value <= gt + 1e-12
        many = apgd(quadratic(A, b), T, rho=rho, norm="linf", steps=20, restarts=10,
                    generator=torch.Generator().manual_seed(0))
        assert one.value <= many.value <= gt + 1e-12
        hits += many.value == pytest.approx(gt, rel=1e-3)
    assert hits >= 5


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_one_step_reaches_full_radius(f64, norm):
    # Linear f = b'd: the maximum is rho ||T b||_1 (l-inf) or rho ||T b||_2 (l2), attained by one
    # plain step (the reference code's single step reached only 0.75 rho).
    b = torch.tensor([1.0, -2.0, 0.5, 3.0])
    T = torch.tensor([0.5, 1.0, 0.0, 2.0])
    rho = 0.1
    res = apgd(lambda d: (b @ d, b), T, rho=rho, norm=norm, steps=1)
    if norm == "linf":
        assert res.value == pytest.approx(rho * float((T * b).abs().sum()), rel=1e-12)
        torch.testing.assert_close(res.delta, rho * T * torch.sign(b))
    else:
        assert res.value == pytest.approx(rho * float((T * b).norm()), rel=1e-12)
        # steepest ascent for ||T^-1 .||_2: T^2 g / ||T g|| (not T g / ||g||)
        torch.testing.assert_close(res.delta, rho * T**2 * b / (T * b).norm())
    assert res.num_evals == 2


def test_zero_scale_with_non_finite_gradient_stays_finite(f64):
    # A gradient that is infinite on a frozen coordinate must not leak NaN (0 * inf).
    T = torch.tensor([0.0, 1.0, 0.0, 2.0])
    b = torch.tensor([5.0, 1.0, -1.0, -1.0])

    def fn(d):
        g = b.clone()
        g[0] = math.inf
        return b @ d, g

    for norm in ("l2", "linf"):
        res = apgd(fn, T, rho=0.2, norm=norm, steps=5)
        assert torch.isfinite(res.delta).all() and math.isfinite(res.value)
        assert res.delta[0] == 0 and res.delta[2] == 0
        expected = 0.2 * (float((T * b)[[1, 3]].norm()) if norm == "l2" else 3.0)
        assert res.value == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------- nonconvex


def two_param_loss():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(32, generator=gen)
    y = torch.sin(2 * x) + 0.1 * torch.randn(32, generator=gen)
    w = torch.tensor([1.3, 0.8])

    def loss(v):  # a 2-parameter "model" y = w2 * tanh(w1 * x), squared error
        return ((v[1] * torch.tanh(v[0] * x) - y) ** 2).mean()

    def fn(d):
        v = (w + d).requires_grad_(True)
        val = loss(v)
        (g,) = torch.autograd.grad(val, v)
        return val.detach(), g

    return w, loss, fn


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("rho", [0.3, 1.0])
def test_two_parameter_model_beats_random_search(f64, norm, rho):
    w, loss, fn = two_param_loss()
    T = w.abs()
    gen = torch.Generator().manual_seed(6)
    if norm == "linf":
        U = (2 * torch.rand(10_000, 2, generator=gen) - 1) * rho
    else:
        ang = 2 * math.pi * torch.rand(10_000, generator=gen)
        rad = rho * torch.rand(10_000, generator=gen).sqrt()
        U = torch.stack([rad * torch.cos(ang), rad * torch.sin(ang)], 1)
    best_random = max(float(loss(w + T * u)) for u in U)
    res = apgd(fn, T, rho=rho, norm=norm, steps=20)
    assert res.value >= best_random - 1e-12
    assert res.constraint_norm <= rho * (1 + 1e-12)
    assert res.value == pytest.approx(float(loss(w + res.delta)), rel=1e-12)


def test_best_never_decreases_one_call_per_step_and_init(f64):
    gen = torch.Generator().manual_seed(7)
    W = torch.randn(6, 6, generator=gen)

    def fn(d):  # oscillating nonconvex function
        d = d.clone().requires_grad_(True)
        v = torch.sin(3 * W @ d).sum() + (d**2).sum()
        (g,) = torch.autograd.grad(v, d)
        return v.detach(), g

    calls = []

    def counted(d):
        calls.append(1)
        return fn(d)

    res = apgd(counted, torch.ones(6), rho=0.8, norm="l2", steps=30)
    assert len(calls) == res.num_evals == 31
    assert torch.all(res.history[1:] >= res.history[:-1])
    assert res.history[-1] == res.value == res.values.max()
    assert res.value >= res.start_value == pytest.approx(0.0, abs=1e-15)
    res2 = apgd(fn, torch.ones(6), rho=0.8, norm="l2", steps=30, init=fn(torch.zeros(6)))
    assert res2.num_evals == 30 and res2.value == res.value


def test_random_restarts_are_seeded_and_feasible(f64):
    w, loss, fn = two_param_loss()
    T = w.abs()
    kw = dict(rho=1.0, norm="l2", steps=10)
    one = apgd(fn, T, **kw)
    a = apgd(fn, T, restarts=4, generator=torch.Generator().manual_seed(1), **kw)
    b = apgd(fn, T, restarts=4, generator=torch.Generator().manual_seed(1), **kw)
    c = apgd(fn, T, restarts=4, generator=torch.Generator().manual_seed(2), **kw)
    assert a.value == b.value and torch.equal(a.values, b.values)
    assert not torch.equal(a.values, c.values)
    assert a.value >= one.value and a.num_evals == 4 * 11 and a.history.shape == (44,)
    assert torch.equal(a.values[:11], one.values)  # the first run starts at 0 as before
    assert torch.all(a.history[1:] >= a.history[:-1])
    # random starts lie in the ball
    for start in a.values[11::11]:
        assert math.isfinite(float(start))
    r = apgd(fn, T, random_start=True, generator=torch.Generator().manual_seed(1), **kw)
    assert r.start_value != one.start_value
    assert r.constraint_norm <= 1.0 + 1e-12


def test_bad_input():
    f = lambda d: (d.sum(), torch.ones_like(d))  # noqa: E731
    T = torch.ones(3)
    for kw, msg in [
        (dict(rho=0.0), "rho"),
        (dict(rho=-1.0), "rho"),
        (dict(rho=math.nan), "rho"),
        (dict(rho=1.0, norm="l1"), "norm"),
        (dict(rho=1.0, steps=0), "steps"),
        (dict(rho=1.0, restarts=0), "restarts"),
    ]:
        with pytest.raises(ValueError, match=msg):
            apgd(f, T, **kw)
    with pytest.raises(ValueError, match="scale"):
        apgd(f, torch.tensor([1.0, -1.0]), rho=1.0)
    with pytest.raises(ValueError, match="gradient"):
        apgd(lambda d: (d.sum(), torch.ones(5)), T, rho=1.0)
