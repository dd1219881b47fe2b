"""Momentum-direction curvature (MSAM Appendix A.4) against dense float64 Hessians."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from reference import flat_params, reference_loss
from torch import nn

from landscape.analyses.momentum import MomentumOptions, momentum_curvature
from landscape.batch import analyze
from landscape.checkpoint import load_checkpoint
from landscape.config import ConfigError, TrainConfig
from landscape.results import open_results
from landscape.trainer import train


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.randn(24, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (24,))
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    theta = flat_params(model)
    loss = reference_loss(model, x, y)
    return model, x, y, names, shapes, theta, loss


def test_curvature_and_slope_equal_dense_quadratic_forms(f64):
    model, x, y, names, shapes, theta, loss = _setup()
    H = torch.func.hessian(loss)(theta)
    g = torch.func.grad(loss)(theta)
    mom = {n: torch.randn(s, dtype=torch.float64, generator=torch.Generator().manual_seed(i))
           for i, (n, s) in enumerate(zip(names, shapes))}
    v = torch.cat([mom[n].reshape(-1) for n in names])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    ds = momentum_curvature(model, (x, y), mom, random_directions=3, batch_size=10, seed=1)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert ds.direction.values.tolist() == ["momentum", "gradient", "random_0", "random_1", "random_2"]
    for name, d in (("momentum", v), ("gradient", g)):
        u = d / d.norm()
        assert float(ds.curvature.sel(direction=name)) == pytest.approx(float(u @ H @ u), rel=1e-10)
        assert float(ds.slope.sel(direction=name)) == pytest.approx(float(g @ u), rel=1e-10)
        assert float(ds.direction_norm.sel(direction=name)) == pytest.approx(float(d.norm()), rel=1e-12)
    assert float(ds.cosine) == pytest.approx(float(g @ v / (g.norm() * v.norm())), rel=1e-10)
    # random directions: seeded, and their curvatures lie inside the spectrum
    lam = torch.linalg.eigvalsh(H)
    rc = ds.curvature.sel(direction=["random_0", "random_1", "random_2"]).values
    assert np.all(rc >= float(lam[0]) - 1e-12) and np.all(rc <= float(lam[-1]) + 1e-12)
    again = momentum_curvature(model, (x, y), mom, random_directions=3, batch_size=10, seed=1)
    np.testing.assert_array_equal(again.curvature.values, ds.curvature.values)


def test_group_and_missing_buffers(f64):
    model, x, y, names, shapes, theta, loss = _setup()
    mom = {"2.weight": torch.ones(3, 5, dtype=torch.float64)}
    ds = momentum_curvature(model, (x, y), mom, random_directions=0, params="glob:2.*")
    assert json.loads(ds.attrs["missing_momentum"]) == ["2.bias"]
    with pytest.raises(ValueError, match="cover none"):
        momentum_curvature(model, (x, y), {"0.weight": torch.ones(5, 4)}, params="glob:2.*")
    with pytest.raises(ValueError, match="shape"):
        momentum_curvature(model, (x, y), {"2.weight": torch.ones(5, 3)}, params="glob:2.*")
    zero = momentum_curvature(model, (x, y), {n: torch.zeros(s) for n, s in zip(names, shapes)}, random_directions=0)
    assert np.isnan(float(zero.curvature.sel(direction="momentum"))) and np.isnan(float(zero.cosine))
    with pytest.raises(ConfigError, match="random_directions"):
        MomentumOptions(random_directions=-1)


def test_batch_analysis_reads_momentum_from_checkpoints(tmp_path):
    cfg = TrainConfig(dataset="synthetic", dataset_kwargs={"num_samples": 64, "input_shape": [6]}, model="mlp",
                      model_kwargs={"width": 8}, epochs=2, batch_size=32, out=str(tmp_path / "ck" / "msam"),
                      optimizer="msam", msam={"rho": 0.3})
    run = train(cfg, progress=False)
    s = analyze(tmp_path / "ck", "momentum", out=tmp_path / "res", progress=False,
                options={"momentum": {"random_directions": 2}, "data": {"n": 32}})
    assert not s.failed and len(s.done) == 2
    ds = open_results(tmp_path / "res", "momentum")
    assert ds.curvature.dims == ("run", "step", "direction")
    ck = load_checkpoint(run / "epoch_0002.pt")
    direct = momentum_curvature(ck.model, ck_data(), ck.momentum(), random_directions=2, batch_size=256)
    np.testing.assert_allclose(ds.curvature.sel(run="msam").isel(step=-1).values, direct.curvature.values, rtol=1e-6)


def ck_data():
    from landscape.data import get_dataset

    return get_dataset("synthetic", "train", num_samples=64, input_shape=(6,)).subset(32)
