"""bench/bench_hessian.py's peer wrappers (curvlinops + eigsh, hessian-eigenthings lanczos) compute
the top-5 by magnitude of the same Hessian as a dense float64 reference and count their HVPs.
The peers are bench-only: skipped where they are not installed (``make bench`` installs them)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "bench_hessian.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_hessian", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_hessian"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double().eval()
    x = torch.randn(20, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (20,))
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]

    def f(theta):
        ps = {n: t.view(s) for n, t, s in zip(names, theta.split(sizes), shapes)}
        return F.cross_entropy(torch.func.functional_call(model, ps, (x,)), y)

    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    H = torch.autograd.functional.hessian(f, theta)  # reverse-over-reverse, float64
    lam = torch.linalg.eigvalsh(H).numpy()
    return model, x, y, lam[np.argsort(-np.abs(lam))][:5]


def test_curvlinops_eigsh_matches_the_dense_hessian(problem):
    pytest.importorskip("curvlinops")
    model, x, y, ref = problem
    lam, hvps, secs = _bench().run_curvlinops_eigs(model, x, y, tol=0.0)
    assert _bench().rel_err(lam, ref) < 1e-8
    assert hvps > 0 and secs > 0


def test_eigenthings_lanczos_matches_the_dense_hessian_and_counts_its_steps(problem):
    pytest.importorskip("hessian_eigenthings")
    model, x, y, ref = problem
    lam, hvps, _ = _bench().run_eigenthings_eigs(model, x, y, max_iter=40)
    assert _bench().rel_err(lam, ref) < 1e-8
    assert hvps == 40  # a fixed number of Lanczos steps, one HVP each
