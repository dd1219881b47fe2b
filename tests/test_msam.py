"""MSAM against hand-rolled Algorithm 1; BatchNorm helpers against hand-computed statistics."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from landscape.config import MSAMConfig, TrainConfig
from landscape.optim import MSAM, build_optimizer, frozen_bn_stats, recalibrate_bn, train_step


def net(seed=0):
    torch.manual_seed(seed)
    # no bias before BatchNorm: its gradient is rounding noise, which Adam would amplify
    return nn.Sequential(nn.Linear(3, 5, bias=False), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 2))


def batches(k=5, n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randint(0, 2, (n,), generator=g)) for _ in range(k)]


def loss_and_grad(model, names, ws, x, y):
    """Loss and gradient of the (train-mode) model at the flat parameter list ``ws``."""
    ws = [w.detach().requires_grad_(True) for w in ws]
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    loss = F.cross_entropy(functional_call(model, ({**dict(zip(names, ws)), **buffers}), (x,)), y)
    return loss.detach(), list(torch.autograd.grad(loss, ws))


def unit(v):
    n = math.sqrt(sum(float((t * t).sum()) for t in v))
    return [t / n for t in v]


def algorithm1_sgd(model, data, lr, mu, wd, rhos):
    """MSAM Algorithm 1: weights stay shifted between steps; L2 decay is part of the loss.

    ``rhos[t]`` is the shift used for the gradient of step t (0 = plain step, e.g. warm-up).
    Returns the unshifted weights after each step and the losses at the shifted points.
    """
    names = [n for n, _ in model.named_parameters()]
    wt = [p.detach().clone() for p in model.parameters()]  # shifted weights (v = 0: no shift)
    v = None
    out, losses = [], []
    for t, (x, y) in enumerate(data):
        loss, g = loss_and_grad(model, names, wt, x, y)
        losses.append(loss)
        g = [gi + wd * wi for gi, wi in zip(g, wt)]  # d/dw of wd/2 ||w||^2 at the shifted point
        w = wt if v is None else [wi + rhos[t] * u for wi, u in zip(wt, unit(v))]  # undo the shift
        v = g if v is None else [mu * vi + gi for vi, gi in zip(v, g)]
        w = [wi - lr * vi for wi, vi in zip(w, v)]
        nxt = rhos[t + 1] if t + 1 < len(rhos) else 0.0
        wt = [wi - nxt * u for wi, u in zip(w, unit(v))]  # shift for the next step
        out.append([wi + nxt * u for wi, u in zip(wt, unit(v))])  # moved back (as after training)
    return out, losses


def test_msam_sgd_equals_algorithm1(f64):
    data = batches()
    model = net()
    ref, ref_losses = algorithm1_sgd(copy.deepcopy(model), data, lr=0.1, mu=0.9, wd=1e-2, rhos=[0.5] * 5)
    opt = MSAM(model, torch.optim.SGD, rho=0.5, lr=0.1, momentum=0.9, weight_decay=1e-2)
    for t, (x, y) in enumerate(data):
        loss, logits = train_step(model, opt, x, y, F.cross_entropy)
        assert not opt.shifted and logits.shape == (6, 2)
        assert float(loss) == pytest.approx(float(ref_losses[t]), rel=1e-12)
        for p, r in zip(model.parameters(), ref[t]):  # unshifted weights between steps
            torch.testing.assert_close(p.detach(), r, rtol=0, atol=1e-13)
    assert "momentum_buffer" in opt.state_dict()["state"][0]


def test_msam_warmup_without_rho_equals_algorithm1_and_sgd(f64):
    data = batches()
    rhos = [0.0, 0.0, 0.3, 0.3, 0.3]
    model = net()
    ref, _ = algorithm1_sgd(copy.deepcopy(model), data, lr=0.05, mu=0.9, wd=0.0, rhos=rhos)
    plain_model = copy.deepcopy(model)
    plain = torch.optim.SGD(plain_model.parameters(), lr=0.05, momentum=0.9)
    opt = MSAM(model, torch.optim.SGD, rho=0.3, lr=0.05, momentum=0.9)
    for t, (x, y) in enumerate(data):
        opt.rho_active = rhos[t] > 0
        train_step(model, opt, x, y, F.cross_entropy)
        if t < 2:  # rho off: exactly the base optimizer
            train_step(plain_model, plain, x, y, F.cross_entropy)
            assert all(torch.equal(a, b) for a, b in zip(model.parameters(), plain_model.parameters()))
        for p, r in zip(model.parameters(), ref[t]):
            torch.testing.assert_close(p.detach(), r, rtol=0, atol=1e-13)
    assert not all(torch.equal(a, b) for a, b in zip(model.parameters(), plain_model.parameters()))


def test_msam_adamw_equals_hand_rolled(f64):
    data = batches()
    model = net()
    lr, b1, b2, eps, wd, rho = 1e-2, 0.9, 0.999, 1e-8, 0.1, 0.2
    names = [n for n, _ in model.named_parameters()]
    w = [p.detach().clone() for p in model.parameters()]
    m = [torch.zeros_like(t) for t in w]
    s = [torch.zeros_like(t) for t in w]
    ref = []
    for t, (x, y) in enumerate(data, start=1):
        shifted = w if t == 1 else [wi - rho * u for wi, u in zip(w, unit(m))]  # along exp_avg
        _, g = loss_and_grad(model, names, shifted, x, y)
        m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g)]
        s = [b2 * si + (1 - b2) * gi * gi for si, gi in zip(s, g)]
        w = [wi * (1 - lr * wd) for wi in w]  # decoupled decay, at the unshifted weights
        w = [wi - lr / (1 - b1**t) * mi / (si.sqrt() / math.sqrt(1 - b2**t) + eps) for wi, mi, si in zip(w, m, s)]
        ref.append(w)
    opt = MSAM(model, torch.optim.AdamW, rho=rho, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    for t, (x, y) in enumerate(data):
        train_step(model, opt, x, y, F.cross_entropy)
        for p, r in zip(model.parameters(), ref[t]):
            torch.testing.assert_close(p.detach(), r, rtol=0, atol=1e-12)
    assert "exp_avg" in opt.state_dict()["state"][0]


def test_msam_state_dict_round_trip_resumes_exactly(f64, tmp_path):
    data = batches()
    model = net()
    opt = MSAM(model, torch.optim.SGD, rho=1.0, lr=0.1, momentum=0.9, weight_decay=5e-4)
    for x, y in data[:3]:
        train_step(model, opt, x, y, F.cross_entropy)
    torch.save({"m": model.state_dict(), "o": opt.state_dict()}, tmp_path / "c.pt")
    ck = torch.load(tmp_path / "c.pt", weights_only=True)
    assert all("momentum_buffer" in s for s in ck["o"]["state"].values())
    model2 = net(seed=3)
    model2.load_state_dict(ck["m"])
    opt2 = MSAM(model2, torch.optim.SGD, rho=1.0, lr=0.1, momentum=0.9, weight_decay=5e-4)
    opt2.load_state_dict(ck["o"])
    for x, y in data[3:]:
        train_step(model, opt, x, y, F.cross_entropy)
        train_step(model2, opt2, x, y, F.cross_entropy)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))


def test_msam_closure_error_leaves_unshifted_weights(f64):
    data = batches()
    model = net()
    opt = MSAM(model, torch.optim.SGD, rho=1.0, lr=0.1, momentum=0.9)
    train_step(model, opt, *data[0], F.cross_entropy)
    before = [p.detach().clone() for p in model.parameters()]

    def bad():
        assert not all(torch.equal(a, b) for a, b in zip(model.parameters(), before))  # shifted now
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        opt.step(bad)
    assert not opt.shifted and all(torch.equal(a, b) for a, b in zip(model.parameters(), before))


def test_build_optimizer_msam():
    model = net()
    opt = build_optimizer(model, TrainConfig(optimizer="msam", msam=MSAMConfig(rho=2.0)))
    assert isinstance(opt, MSAM) and type(opt.base_optimizer) is torch.optim.SGD and opt.rho == 2.0
    opt = build_optimizer(model, TrainConfig(optimizer="msam", base_optimizer="adamw", lr=1e-3))
    assert type(opt.base_optimizer) is torch.optim.AdamW and opt.rho == 3.0
    opt.param_groups[0]["lr"] = 5e-4
    assert opt.base_optimizer.param_groups[0]["lr"] == 5e-4


def test_msam_bad_input():
    model = net()
    with pytest.raises(ValueError, match="rho"):
        MSAM(model, torch.optim.SGD, rho=-1.0, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="momentum > 0"):
        MSAM(model, torch.optim.SGD, rho=1.0, lr=0.1)
    with pytest.raises(ValueError, match="accepted"):
        MSAM(model, torch.optim.RMSprop, rho=1.0, lr=0.1)
    with pytest.raises(ValueError, match="closure"):
        MSAM(model, torch.optim.SGD, rho=1.0, lr=0.1, momentum=0.9).step()


# ----------------------------------------------------------------- BatchNorm helpers
def test_recalibrate_bn_is_cumulative_average_at_current_weights(f64):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3), nn.BatchNorm1d(3)).eval()
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 2.0)
        model[1].bias.normal_()
        for bn in (model[1], model[4]):  # stale statistics
            bn.running_mean.fill_(7.0)
            bn.running_var.fill_(9.0)
    params = [p.detach().clone() for p in model.parameters()]
    xs = [torch.randn(n, 3, dtype=torch.float64) for n in (5, 8, 6)]
    mean1, var1, mean2, var2 = [], [], [], []
    for x in xs:  # train-mode features by hand
        h = model[0](x)
        mean1.append(h.mean(0))
        var1.append(h.var(0, unbiased=True))
        z = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + model[1].eps) * model[1].weight + model[1].bias
        h2 = model[3](torch.relu(z))
        mean2.append(h2.mean(0))
        var2.append(h2.var(0, unbiased=True))
    recalibrate_bn(model, [(x, None) for x in xs])
    for bn, mu, var in ((model[1], mean1, var1), (model[4], mean2, var2)):
        torch.testing.assert_close(bn.running_mean, torch.stack(mu).mean(0).detach(), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(bn.running_var, torch.stack(var).mean(0).detach(), rtol=1e-12, atol=1e-14)
        assert int(bn.num_batches_tracked) == 3 and bn.momentum == 0.1
    assert not any(m.training for m in model.modules())
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), params))


def test_recalibrate_bn_restores_everything_on_error(f64):
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    model[1].train(False)  # mixed modes are restored per module
    old = [b.clone() for b in model.buffers()]
    with pytest.raises(RuntimeError):
        recalibrate_bn(model, [torch.randn(4, 3), torch.randn(4, 5)])  # second batch: wrong width
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), old))
    assert model.training and model[0].training and not model[1].training and model[1].momentum == 0.1
    with pytest.raises(ValueError, match="no batches"):
        recalibrate_bn(model, [])
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), old))
    ln = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    recalibrate_bn(ln, [])  # nothing to recalibrate: a no-op


def test_frozen_bn_stats_is_exact_and_exception_safe():
    bn = nn.BatchNorm1d(3)
    bn(torch.randn(5, 3))
    old = [b.clone() for b in bn.buffers()]
    with pytest.raises(RuntimeError), frozen_bn_stats(bn):
        bn(torch.randn(5, 3) * 4 + 2)
        raise RuntimeError("boom")
    assert all(torch.equal(a, b) for a, b in zip(bn.buffers(), old))
