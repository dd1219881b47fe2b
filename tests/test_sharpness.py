"""m-sharpness (SAM-ON Eq. 6) against hand-computed perturbations and brute force."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from landscape.analyses.common import comparable
from landscape.analyses.sharpness import SharpnessOptions, _batch_seed, sharpness
from landscape.config import ConfigError
from landscape.models import build_model
from landscape.objective import NonFiniteLossError


def tiny_data(n=64, d=6, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def bn_mlp(seed=0, d=6, classes=3):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(d, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, classes))
    with torch.no_grad():  # non-trivial running statistics and BN affine parameters
        m[1].running_mean.uniform_(-0.5, 0.5)
        m[1].running_var.uniform_(0.5, 2.0)
        m[1].weight.uniform_(0.5, 1.5)
        m[1].bias.uniform_(-0.3, 0.3)
    return m


def batch_loss(model, params, x, y, logit_normalize=False):
    """Independent reference: cross-entropy of the model in eval mode at ``params``."""
    was = model.training
    model.eval()
    try:
        z = functional_call(model, {**dict(model.named_buffers()), **params}, (x,))
    finally:
        model.train(was)
    if logit_normalize:
        z = z - z.mean(-1, keepdim=True)
        z = z / z.norm(dim=-1, keepdim=True).clamp_min(1e-10)
    return F.cross_entropy(z, y)


def snapshot(model):
    return (
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
    )


def assert_unchanged(model, snap):
    state, modes, req = snap
    now = model.state_dict()
    assert state.keys() == now.keys()
    for k in state:
        assert torch.equal(state[k], now[k]), k
    assert modes == [m.training for m in model.modules()]
    assert req == [p.requires_grad for p in model.parameters()]


# ---------------------------------------------------------------- ground truth


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("adaptive", [True, False])
@pytest.mark.parametrize("logit_normalize", [False, True])
def test_one_step_matches_hand_computed_sam_step(f64, norm, adaptive, logit_normalize):
    model = bn_mlp()
    x, y = tiny_data()
    with torch.no_grad():
        model[0].weight[0, :2] = 0.0  # exactly-zero weights: T = 0 under adaptive scaling
    rho = 0.05
    res = sharpness(model, (x, y), kind="one-step", norm=norm, rho=rho, adaptive=adaptive, m=32, n=64,
                    logit_normalize=logit_normalize)
    params = {k: v.detach() for k, v in model.named_parameters()}
    for b in range(2):
        xb, yb = x[32 * b: 32 * (b + 1)], y[32 * b: 32 * (b + 1)]
        ps = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        loss0 = batch_loss(model, ps, xb, yb, logit_normalize)
        grads = torch.autograd.grad(loss0, list(ps.values()))
        loss0 = loss0.detach()
        # SAM-ON Table 9 / ASAM elementwise: T = |w| (or 1); l-inf: rho T sign(g);
        # l2: rho T^2 g / ||T g|| over all parameters.
        Ts = {k: (v.abs() if adaptive else torch.ones_like(v)) for k, v in params.items()}
        tg = {k: Ts[k] * g for k, g in zip(params, grads)}
        if norm == "linf":
            delta = {k: rho * Ts[k] * torch.sign(tg[k]) for k in params}
        else:
            nrm = torch.sqrt(sum((t**2).sum() for t in tg.values()))
            delta = {k: rho * Ts[k] * tg[k] / nrm for k in params}
        loss1 = batch_loss(model, {k: params[k] + delta[k] for k in params}, xb, yb, logit_normalize)
        assert float(res.loss_clean[b]) == pytest.approx(float(loss0), rel=1e-12)
        assert float(res.loss_perturbed.sel(rho=rho)[b]) == pytest.approx(float(loss1), rel=1e-12)
        assert float(res.sharpness.sel(rho=rho)[b]) == pytest.approx(float(loss1 - loss0), rel=1e-9, abs=1e-14)
    assert float(res.constraint_norm.max()) == pytest.approx(rho, rel=1e-12)
    assert float(res.sharpness_mean[0]) == pytest.approx(float(res.sharpness.mean()), rel=1e-12)
    assert float(res.sharpness_sem[0]) == pytest.approx(float(np.std(res.sharpness.values, ddof=1) / math.sqrt(2)), rel=1e-12)


class TwoParam(nn.Module):
    """A nonlinear 2-parameter classifier: logits (w0 x0, 3 tanh(w1 x1), 0)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.3, -0.8]))

    def forward(self, x):
        return torch.stack([self.w[0] * x[:, 0], 3 * torch.tanh(self.w[1] * x[:, 1]), torch.zeros_like(x[:, 0])], 1)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_worst_beats_10000_random_feasible_points_on_two_parameter_model(f64, norm):
    model = TwoParam()
    x, y = tiny_data(n=64, d=2, classes=3, seed=4)
    rho = 0.8
    res = sharpness(model, (x, y), kind="worst", norm=norm, rho=rho, m=32, n=64)
    w = model.w.detach()
    T = w.abs()
    g = torch.Generator().manual_seed(0)
    if norm == "linf":
        U = (2 * torch.rand(10_000, 2, generator=g) - 1) * rho
    else:
        ang, rad = 2 * math.pi * torch.rand(10_000, generator=g), rho * torch.rand(10_000, generator=g).sqrt()
        U = torch.stack([rad * torch.cos(ang), rad * torch.sin(ang)], 1)
    for b in range(2):
        xb, yb = x[32 * b: 32 * (b + 1)], y[32 * b: 32 * (b + 1)]
        with torch.no_grad():
            W = w + T * U  # all 10,000 points at once: logits (10000, 32, 3)
            z = torch.stack([W[:, :1] * xb[:, 0], 3 * torch.tanh(W[:, 1:] * xb[:, 1]), torch.zeros(len(W), 32)], -1)
            losses = F.cross_entropy(z.reshape(-1, 3), yb.repeat(len(W)), reduction="none").view(len(W), 32).mean(1)
            l0 = F.cross_entropy(model(xb), yb)
            assert float(losses[0]) == pytest.approx(float(F.cross_entropy(functional_call(model, {"w": W[0]}, (xb,)), yb)))
        assert float(res.sharpness[0, b]) >= float(losses.max() - l0) - 1e-12
        assert float(res.constraint_norm[0, b]) <= rho * (1 + 1e-12)


def test_average_uses_rho_T_z_draws_exactly(f64):
    # The documented draws: z ~ N(0, 1) (or U[-1, 1]) from the batch's seeded generator,
    # delta = rho * T * z; the same z at every rho.
    model = bn_mlp()
    x, y = tiny_data()
    rhos = [0.01, 0.1]
    for dist in ("gaussian", "uniform"):
        res = sharpness(model, (x, y), kind="average", distribution=dist, norm="l2", rho=rhos, m=32, n=64,
                        samples=3, seed=5)
        names = [k for k, _ in model.named_parameters()]
        w = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        T = w.abs()
        for b in range(2):
            xb, yb = x[32 * b: 32 * (b + 1)], y[32 * b: 32 * (b + 1)]
            for r, rho in enumerate(rhos):
                gen = torch.Generator().manual_seed(_batch_seed(5, b))
                losses, norms = [], []
                for _ in range(3):
                    z = torch.randn(w.shape, generator=gen) if dist == "gaussian" else 2 * torch.rand(w.shape, generator=gen) - 1
                    v = w + rho * T * z
                    parts = dict(zip(names, torch.split(v, [p.numel() for p in model.parameters()])))
                    ps = {k: parts[k].view_as(p) for k, p in model.named_parameters()}
                    losses.append(float(batch_loss(model, ps, xb, yb)))
                    norms.append(rho * float(z.norm()))
                assert float(res.loss_perturbed[r, b]) == pytest.approx(np.mean(losses), rel=1e-12)
                assert float(res.constraint_norm[r, b]) == pytest.approx(np.mean(norms), rel=1e-12)
        assert res.rho.attrs["long_name"].startswith("perturbation standard deviation" if dist == "gaussian" else "perturbation radius")


# ---------------------------------------------------------------- orderings on real models


@pytest.fixture(scope="module")
def real_models():
    torch.manual_seed(0)
    mlp = build_model("mlp", input_shape=(12,), num_classes=4, width=16, depth=2, norm="batch")
    cnn = build_model("resnet1d", input_shape=(12,), num_classes=4, width=4, depth=1)
    for mdl in (mlp, cnn):  # move BN running statistics away from their defaults
        mdl.train()
        with torch.no_grad():
            for _ in range(3):
                mdl(torch.randn(32, 12))
        mdl.eval()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 12, generator=g), torch.randint(0, 4, (64,), generator=g)
    return [mlp, cnn], (x, y)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_worst_at_least_one_step_and_its_first_iterate_is_the_one_step_point(real_models, norm):
    models, data = real_models
    rhos = [0.01, 0.05]
    for model in models:
        kw = dict(norm=norm, rho=rhos, m=32, n=64, logit_normalize=True)
        worst = sharpness(model, data, kind="worst", steps=8, **kw)
        one = sharpness(model, data, kind="one-step", **kw)
        assert np.all(worst.sharpness.values >= one.sharpness.values)
        assert np.all(worst.sharpness.values >= 0)
        # Auto-PGD's first step from 0 is the SAM ascent step at the full radius.
        first = np.maximum(worst.loss_clean.values[None, :], one.loss_perturbed.values)
        np.testing.assert_allclose(worst.loss_history.values[:, :, 1], first, rtol=1e-6)
        assert np.all(np.diff(worst.loss_history.values, axis=-1) >= 0)  # best never decreases
        np.testing.assert_allclose(worst.loss_history.values[:, :, -1], worst.loss_perturbed.values, rtol=0)
        assert np.all(worst.constraint_norm.values <= np.asarray(rhos)[:, None] * (1 + 1e-6))


def test_worst_at_least_uniform_box_average_under_linf(real_models):
    models, data = real_models
    for model in models:
        kw = dict(norm="linf", rho=[0.02, 0.1], m=32, n=64)
        worst = sharpness(model, data, kind="worst", steps=10, **kw)
        avg = sharpness(model, data, kind="average", distribution="uniform", samples=10, **kw)
        assert np.all(worst.sharpness.values >= avg.sharpness.values)
        assert np.all(avg.constraint_norm.values <= np.asarray([0.02, 0.1])[:, None] * (1 + 1e-6))


def test_call_counts_one_forward_backward_per_step(real_models):
    models, data = real_models
    res = sharpness(models[0], data, kind="worst", rho=[0.01, 0.02], m=32, n=64, steps=7, restarts=2)
    # the clean gradient is reused by the first run; a random restart evaluates its start
    assert np.all(res.grad_calls.values == 7 + 8)
    assert np.all(res.forward_calls.values == 1)  # error at the best point
    assert np.all(res.clean_grad_calls.values == 1) and np.all(res.clean_forward_calls.values == 1)
    assert res.loss_history.sizes["iteration"] == 16


# ---------------------------------------------------------------- frozen and restricted coordinates


class Recorder:
    """Forward hooks that record the parameters each module sees inside functional_call."""

    def __init__(self, model):
        self.seen: dict[str, list[torch.Tensor]] = {}
        self.handles = []
        for name, mod in model.named_modules():
            if isinstance(mod, nn.Linear | nn.BatchNorm1d | nn.Conv1d):
                self.handles.append(mod.register_forward_hook(self._hook(name)))

    def _hook(self, name):
        def hook(mod, inp, out):
            for pn, p in mod.named_parameters(recurse=False):
                self.seen.setdefault(f"{name}.{pn}", []).append(p.detach().clone())
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("spec", ["norm", "no-norm"])
@pytest.mark.parametrize("kind", ["worst", "average", "one-step"])
def test_parameter_group_leaves_the_others_unperturbed(spec, kind):
    model = bn_mlp()
    x, y = tiny_data()
    orig = {k: v.detach().clone() for k, v in model.named_parameters()}
    rec = Recorder(model)
    try:
        res = sharpness(model, (x, y), kind=kind, params=spec, rho=0.1, m=32, n=64, steps=4, samples=3)
    finally:
        rec.close()
    in_group = {"1.weight", "1.bias"} if spec == "norm" else {"0.weight", "0.bias", "3.weight", "3.bias"}
    assert res.attrs["num_parameters"] == sum(orig[k].numel() for k in in_group)
    for name, values in rec.seen.items():
        moved = any(not torch.equal(v, orig[name]) for v in values)
        assert moved == (name in in_group), name


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("kind", ["worst", "average", "one-step"])
def test_zero_weights_under_adaptive_scaling_are_frozen_and_finite(norm, kind):
    model = bn_mlp()
    with torch.no_grad():
        model[0].weight[:3] = 0.0
        model[1].bias.zero_()  # BatchNorm beta starts at exactly 0
    x, y = tiny_data()
    rec = Recorder(model)
    try:
        res = sharpness(model, (x, y), kind=kind, norm=norm, rho=0.2, m=32, n=64, steps=5, samples=3)
    finally:
        rec.close()
    for v in res.data_vars.values():
        assert np.all(np.isfinite(v.values)), v.name
    assert res.attrs["num_frozen_parameters"] == 3 * 6 + 8
    assert all(torch.all(v[:3] == 0) for v in rec.seen["0.weight"])
    assert all(torch.all(v == 0) for v in rec.seen["1.bias"])
    # with eta > 0 the zero weights move again
    res = sharpness(model, (x, y), kind=kind, norm=norm, rho=0.2, eta=0.01, m=32, n=64, steps=2, samples=2)
    assert res.attrs["num_frozen_parameters"] == 0


# ---------------------------------------------------------------- the model is never changed


class Boom(nn.Module):
    """Raises on the k-th forward call (to interrupt an analysis mid-way)."""

    def __init__(self, inner, k):
        super().__init__()
        self.inner, self.k, self.calls = inner, k, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.k:
            raise RuntimeError("boom")
        return self.inner(x)


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
@pytest.mark.parametrize("kind", ["worst", "average", "one-step"])
def test_model_unchanged_after_success_and_after_an_exception(bn_mode, kind):
    x, y = tiny_data()
    model = Boom(bn_mlp(), k=10**9)
    model.train()
    model.inner[2].eval()  # a mixed mode pattern must come back as it was
    snap = snapshot(model)
    sharpness(model, (x, y), kind=kind, bn_mode=bn_mode, rho=0.1, m=32, n=64, steps=3, samples=2)
    assert_unchanged(model, snap)
    model.k, model.calls = 5, 0
    with pytest.raises(RuntimeError, match="boom"):
        sharpness(model, (x, y), kind=kind, bn_mode=bn_mode, rho=0.1, m=32, n=64, steps=3, samples=3)
    model.k = 10**9
    assert_unchanged(model, snap)


# ---------------------------------------------------------------- determinism, options, output


def test_same_seed_same_numbers(real_models):
    models, data = real_models
    for kw in (dict(kind="average", samples=4), dict(kind="worst", steps=3, restarts=2)):
        a = sharpness(models[1], data, rho=[0.05, 0.1], m=32, n=64, seed=3, **kw)
        b = sharpness(models[1], data, rho=[0.05, 0.1], m=32, n=64, seed=3, **kw)
        c = sharpness(models[1], data, rho=[0.05, 0.1], m=32, n=64, seed=4, **kw)
        assert comparable(a).identical(comparable(b))  # peak memory is a measurement, not a result
        assert not np.array_equal(a.loss_perturbed.values, c.loss_perturbed.values)


def test_bad_input_names_the_option():
    model = bn_mlp()
    data = tiny_data()
    cases = [
        (dict(rho=0.0), "rho"),
        (dict(rho=-0.1), "rho"),
        (dict(rho=[0.1, 0.0]), "rho"),
        (dict(rho=[0.1, 0.1]), "repeated"),
        (dict(rho=float("nan")), "rho"),
        (dict(m=64, n=32), "n=32 must be >= m=64"),
        (dict(m=24, n=64), "m=24 must divide n=64"),
        (dict(norm="l1"), "norm"),
        (dict(kind="best"), "kind"),
        (dict(distribution="laplace"), "distribution"),
        (dict(eta=-1.0), "eta"),
        (dict(steps=0), "steps"),
        (dict(m=32, n=128), "only 64"),
        (dict(dtype="int8"), "dtype"),
    ]
    for kw, msg in cases:
        kw = {"m": 32, "n": 64, **kw}
        with pytest.raises(ConfigError, match=msg):
            sharpness(model, data, **kw)
    with torch.no_grad():
        model[3].weight[0, 0] = math.nan
    with pytest.raises(NonFiniteLossError, match="batch 0"):
        sharpness(model, data, m=32, n=64)


def test_options_round_trip_and_registry_call(tmp_path):
    opts = SharpnessOptions.from_dict({"rho": [0.01, 0.02], "kind": "one-step", "m": 32, "n": 64, "dtype": "float64"})
    assert opts.rho == (0.01, 0.02)
    model = bn_mlp()
    res = sharpness(model, tiny_data(), **opts.to_dict())
    assert SharpnessOptions.from_dict(json.loads(res.attrs["config_json"])) == opts
    with pytest.raises(ConfigError, match="did you mean 'samples'"):
        SharpnessOptions.from_dict({"sample": 3})
    for name, v in {**res.data_vars, **res.coords}.items():
        assert {"long_name", "units"} <= set(v.attrs), name
    for k, v in res.attrs.items():
        assert isinstance(v, str | int | float), k
    res.to_netcdf(tmp_path / "s.nc", engine="h5netcdf")
    import xarray as xr

    with xr.open_dataset(tmp_path / "s.nc", engine="h5netcdf") as back:
        assert back.sharpness.dims == ("rho", "batch")
        np.testing.assert_array_equal(back.sharpness.values, res.sharpness.values)


def test_float32_model_in_float64_objective_keeps_the_model_float32():
    model = bn_mlp()
    snap = snapshot(model)
    res = sharpness(model, tiny_data(), kind="worst", rho=0.05, m=32, n=64, steps=3, dtype=torch.float64)
    assert json.loads(res.attrs["config_json"])["dtype"] == "float64"
    assert_unchanged(model, snap)
    assert next(model.parameters()).dtype == torch.float32
