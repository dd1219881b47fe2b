"""hessian_spectrum against dense float64 Hessians of tiny models, and against PyHessian."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import math

import numpy as np
import pytest
import reference
import torch
import xarray as xr
from torch import nn

from landscape.analyses.common import NON_OPTION_KEYWORDS
from landscape.analyses.hessian import HessianOptions, _seeds, hessian_spectrum
from landscape.analyses.lanczos import rademacher
from landscape.config import ConfigError
from landscape.objective import NonFiniteLossError
from landscape.params import GroupError


def tiny_mlp():
    return reference.tiny_mlp(6).double()


def tiny_bn_cnn():
    return reference.tiny_bn_cnn(5).double()


def data(n, shape, seed=0):
    return reference.data(n, shape, seed=seed, dtype=torch.float64)


def dense_hessian(model, x, y):
    """Exact Hessian of the eval-mode mean cross-entropy over all parameters (one forward)."""
    return torch.func.hessian(reference.reference_loss(model, x, y))(reference.flat_params(model))


CASES = [(tiny_mlp, (6,)), (tiny_bn_cnn, (1, 5, 5))]


@pytest.mark.parametrize("make,shape", CASES)
def test_top5_trace_density_match_dense_hessian(f64, make, shape):
    model = make()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = data(30, shape)
    H = dense_hessian(model, x, y)
    P = H.shape[0]
    assert P < 2000
    exact = torch.linalg.eigvalsh(H).flip(0)
    res = hessian_spectrum(model, (x, y), top_k=5, tol=1e-6, batch_size=16, eigenvectors=True,
                           trace_samples=3 * P, trace_rtol=0.0, slq_runs=10, slq_steps=20, seed=3)
    # Eigenvalues: the Ritz residual bounds the error, so tol=1e-6 guarantees 1e-6 relative.
    np.testing.assert_allclose(res.eigenvalues.values, exact[:5].numpy(), rtol=1e-6, atol=0)
    assert res.converged.values.all() and res.attrs["hvp_method"] == "double-backward"
    np.testing.assert_allclose(res.eigenvalue_ratio.values, exact[0].item() / exact[:5].numpy(), rtol=1e-5)
    V = torch.from_numpy(res.eigenvectors.values)
    np.testing.assert_allclose(torch.linalg.vector_norm(V @ H - exact[:5, None] * V, dim=1).numpy(),
                               0, atol=1e-5 * exact[0].item())
    # Trace: a budget of 3P spans the complement of the Lanczos basis, so it is exact.
    assert abs(float(res.trace) - float(torch.trace(H))) < 1e-8 * float(H.abs().sum())
    # SLQ: integrates to 1; per-run quadrature moments equal v^T H^p v / v^T v exactly.
    dens, grid = res.density.values, res.eigenvalue.values
    assert abs(np.trapezoid(dens, grid) - 1) < 1e-6
    nodes = np.nan_to_num(res.slq_nodes.values)
    w = res.slq_weights.values
    np.testing.assert_allclose(w.sum(1), 1, rtol=1e-12)
    # Run 0 is the eigenvalue Lanczos run (its Rademacher start vector), runs 1-9 SLQ's own.
    g_eig, _, g = _seeds(3)
    for r in range(10):
        v = rademacher(P, g_eig if r == 0 else g, torch.device("cpu"))
        v = v / v.norm()
        for p in (1, 2, 3):
            exact_m = float(v @ torch.linalg.matrix_power(H, p) @ v)
            assert abs((w[r] * nodes[r] ** p).sum() - exact_m) < 1e-9 * float(exact[0]) ** p
    # Averaged over runs, the first moments estimate tr(H^p)/P (Monte Carlo, 10 runs).
    for p in (1, 2):
        per_run = (w * nodes**p).sum(1)
        truth = float(torch.trace(torch.linalg.matrix_power(H, p))) / P
        assert abs(per_run.mean() - truth) < 4 * per_run.std(ddof=1) / math.sqrt(10)
    mean_density = np.trapezoid(grid * dens, grid)
    assert abs(mean_density - (w * nodes).sum() / 10) < 1e-6 * abs(float(exact[0]))
    assert res.hvps.sel(part="eigenvalues") == res.attrs["lanczos_steps"]
    # The Lanczos run is continued by budget/3 = P steps, so its basis spans the space: P - steps
    # HVPs (the old Hutch++ default spent 2P on its spanning sketch).
    assert res.attrs["trace_deflation_rank"] == P
    assert res.hvps.sel(part="trace") == P - res.attrs["lanczos_steps"]
    # Run 0 reuses the (trace-extended) eigenvalue run: its first 20 HVPs are not spent again.
    reused = res.attrs["slq_reused_steps"]
    assert reused == 20
    assert res.hvps.sel(part="density") == np.isfinite(res.slq_nodes.values).sum() - reused
    # The model is unchanged: parameters, buffers, train mode.
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(m.training for m in model.modules())


def test_norm_group_block_spectrum(f64):
    model = tiny_bn_cnn()
    x, y = data(30, (1, 5, 5))
    H = dense_hessian(model, x, y)
    start = 30  # conv weight (27) + bias (3), then BatchNorm gamma (3) and beta (3)
    block = H[start : start + 6, start : start + 6]
    exact = torch.linalg.eigvalsh(block)
    res = hessian_spectrum(model, (x, y), params="norm", top_k=6, tol=1e-10, trace=True,
                           trace_samples=18, density=False, batch_size=7)
    np.testing.assert_allclose(res.eigenvalues.values, exact.flip(0).numpy(), rtol=1e-9, atol=1e-12)
    assert abs(float(res.trace) - float(exact.sum())) < 1e-10
    small = hessian_spectrum(model, (x, y), params="norm", top_k=2, which="SA", tol=1e-10,
                             trace=False, density=False)
    np.testing.assert_allclose(small.eigenvalues.values, exact[:2].numpy(), rtol=1e-9, atol=1e-12)
    assert "trace" not in small and "density" not in small
    assert small.hvps.sel(part="trace") == 0


def test_bn_train_mode_is_its_own_matrix(f64):
    model = tiny_bn_cnn()
    x, y = data(20, (1, 5, 5))
    f = reference.reference_loss(model, x, y, bn_mode="train", batch_size=10)
    theta = reference.flat_params(model)
    H = torch.autograd.functional.hessian(f, theta)  # reverse-over-reverse (func.hessian vmaps BN wrongly)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = hessian_spectrum(model, (x, y), bn_mode="train", batch_size=10, top_k=3, tol=1e-8,
                           trace=False, density=False)
    np.testing.assert_allclose(res.eigenvalues.values, torch.linalg.eigvalsh(H).flip(0)[:3].numpy(), rtol=1e-7)
    assert "different matrix" in res.attrs["note"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_linearize_single_batch_and_float64_copy():
    model = tiny_mlp().float()
    x, y = data(24, (6,))
    x = x.float()
    res = hessian_spectrum(model, (x, y), top_k=3, tol=1e-8, batch_size=64, trace=False,
                           density=False, dtype="float64", hvp_method="linearize")
    assert res.attrs["hvp_method"] == "linearize"
    ref = copy.deepcopy(model).double()
    exact = torch.linalg.eigvalsh(dense_hessian(ref, x.double(), y)).flip(0)[:3]
    np.testing.assert_allclose(res.eigenvalues.values, exact.numpy(), rtol=1e-7)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_unused_parameters_are_zero_rows(f64):
    torch.manual_seed(0)
    model = reference.PartlyUsed().double()
    x, y = data(20, (4,))
    H_used = dense_hessian(model.used, x, y)  # the unused block of the full Hessian is zero
    exact = torch.linalg.eigvalsh(H_used).flip(0)
    res = hessian_spectrum(model, (x, y), top_k=4, tol=1e-10, trace_samples=90, trace_rtol=0.0,
                           density=False, batch_size=8)
    np.testing.assert_allclose(res.eigenvalues.values, exact[:4].numpy(), rtol=1e-9)
    assert abs(float(res.trace) - float(torch.trace(H_used))) < 1e-10


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
def test_pyhessian_cross_check(f64):
    from pyhessian import hessian as PyHessian

    model = tiny_bn_cnn()
    x, y = data(40, (1, 5, 5))
    ours = hessian_spectrum(model, (x, y), top_k=1, tol=1e-8, trace=False, density=False, batch_size=64)
    torch.manual_seed(0)  # PyHessian draws from the global RNG
    ph = PyHessian(copy.deepcopy(model), nn.CrossEntropyLoss(), data=(x, y), cuda=False)
    top, _ = ph.eigenvalues(top_n=1, maxIter=1000, tol=1e-8)
    assert abs(top[0] - float(ours.eigenvalues[0])) <= 1e-3 * abs(float(ours.eigenvalues[0]))


def test_bad_inputs(f64):
    model = tiny_mlp()
    xy = data(10, (6,))
    with pytest.raises(GroupError, match="norm"):
        hessian_spectrum(model, xy, params="norm")
    P = sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match=f"top_k={P + 1} is larger than the dimension"):
        hessian_spectrum(model, xy, top_k=P + 1)
    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad[0].bias[0] = float("nan")
    with pytest.raises(NonFiniteLossError):
        hessian_spectrum(bad, xy)
    with pytest.raises(ConfigError, match="trace_method"):
        hessian_spectrum(model, xy, trace_method="exact")
    with pytest.raises(ConfigError, match="top_k"):
        hessian_spectrum(model, xy, top_k=0)


def test_options_mirror_the_function_and_dataset_conventions(f64, tmp_path):
    sig = inspect.signature(hessian_spectrum)
    kw = {n: p.default for n, p in sig.parameters.items()
          if p.kind is inspect.Parameter.KEYWORD_ONLY and n not in NON_OPTION_KEYWORDS}
    fields = {f.name: f.default for f in dataclasses.fields(HessianOptions)}
    assert kw == fields
    with pytest.raises(ConfigError, match="did you mean 'top_k'"):
        HessianOptions.from_dict({"topk": 3})
    opts = HessianOptions.from_dict({"top_k": 2, "slq_runs": 2, "slq_steps": 10, "trace_samples": 12,
                                     "grid_points": 50, "eigenvectors": True})
    model = tiny_mlp()
    res = hessian_spectrum(model, data(16, (6,)), **opts.to_dict())
    assert json.loads(res.attrs["config_json"]) == opts.to_dict()
    for name, var in {**res.data_vars, **res.coords}.items():
        assert "long_name" in var.attrs and "units" in var.attrs, name
    for key, value in res.attrs.items():
        assert isinstance(value, str | int | float), key
    assert res.density.dims == ("grid",) and res.slq_nodes.dims == ("run_slq", "node")
    assert res.eigenvectors.dims == ("k", "parameter")
    path = tmp_path / "h.nc"
    res.to_netcdf(path, engine="h5netcdf")
    back = xr.load_dataset(path, engine="h5netcdf")
    xr.testing.assert_identical(back, res)


def test_auto_hvp_method(f64):
    model = tiny_mlp()
    x, y = data(20, (6,))
    one = hessian_spectrum(model, (x, y), top_k=2, trace=False, slq_runs=10, slq_steps=30, batch_size=32)
    assert one.attrs["hvp_method"] == "retained-graph"  # one in-memory batch
    batched = hessian_spectrum(model, (x, y), top_k=2, trace=False, slq_runs=10, slq_steps=30, batch_size=8)
    assert batched.attrs["hvp_method"] == "double-backward"
    lin = hessian_spectrum(model, (x, y), top_k=2, trace=False, slq_runs=10, slq_steps=30, batch_size=32,
                           hvp_method="linearize")
    for other in (batched, lin):
        np.testing.assert_allclose(one.eigenvalues.values, other.eigenvalues.values, rtol=1e-6)
        np.testing.assert_allclose(one.slq_nodes.values, other.slq_nodes.values, rtol=1e-6, atol=1e-9)
