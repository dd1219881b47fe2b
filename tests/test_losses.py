"""Loss specs (landscape.losses) and objectives with label-smoothed CE and MSE regression against
hand-written losses and dense float64 Hessians (reverse-over-reverse)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from reference import data, flat_params, tiny_mlp
from torch import nn

from landscape.losses import LossError, resolve_loss
from landscape.objective import Objective


def smoothed_ce(z, y, eps):
    """Label-smoothed cross-entropy written out: (1 - eps) * NLL + eps * mean over classes of -log p."""
    logp = z.log_softmax(-1)
    return ((1 - eps) * -logp.gather(1, y[:, None])[:, 0] - eps * logp.mean(-1)).mean()


def loss_of_theta(model, x, loss):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]

    def f(theta):
        ps = {k: t.view(s) for k, t, s in zip(names, theta.split(sizes), shapes)}
        return loss(torch.func.functional_call(model, ps, (x,)))

    return f


def test_resolve_specs_units_and_records():
    assert resolve_loss("ce").units == "nats" and resolve_loss("ce").classification
    assert resolve_loss("mse").units == "1" and not resolve_loss("mse").classification
    ls = resolve_loss(nn.CrossEntropyLoss(label_smoothing=0.1))
    assert ls.units == "nats" and "label_smoothing=0.1" in ls.spec and ls.spec.startswith("torch.nn.modules.loss:")
    assert resolve_loss("torch.nn:MSELoss").units == "1"
    assert resolve_loss("torch.nn.functional:cross_entropy").spec == "torch.nn.functional:cross_entropy"
    assert resolve_loss(F.nll_loss).units == "nats"

    def mine(z, y):
        return (z - y).abs().mean()

    assert resolve_loss(mine).spec.endswith("test_resolve_specs_units_and_records.<locals>.mine")
    for bad, msg in [("nll", "accepted: ce, mse"), ("nosuch.module:f", "cannot import module 'nosuch.module'"),
                     ("torch.nn:NoSuchLoss", "has no attribute 'NoSuchLoss'"), ("builtins:dict", "not an nn.Module"),
                     (3, "loss of type int is not accepted")]:
        with pytest.raises(LossError, match=msg):
            resolve_loss(bad)


def test_non_scalar_loss_names_the_loss_and_what_is_accepted():
    x, y = data(6, (5,))
    obj = Objective(tiny_mlp(), (x, y), loss=nn.CrossEntropyLoss(reduction="none"))
    with pytest.raises(LossError, match=r"reduction=none\)' returned a tensor of shape \(6,\); accepted: a callable"):
        obj.loss()


def test_label_smoothed_ce_objective_matches_dense_hessian(f64):
    model = tiny_mlp().double()
    x, y = data(13, (5,))
    obj = Objective(model, (x, y), batch_size=5, loss=nn.CrossEntropyLoss(label_smoothing=0.1))
    f = loss_of_theta(model, x, lambda z: smoothed_ce(z, y, 0.1))
    theta = flat_params(model)
    H = torch.autograd.functional.hessian(f, theta)
    torch.testing.assert_close(obj.loss(), f(theta), rtol=1e-13, atol=0)
    torch.testing.assert_close(obj.grad(), torch.func.grad(f)(theta), rtol=1e-12, atol=1e-14)
    v = torch.randn(obj.numel, generator=torch.Generator().manual_seed(0))
    for method in ("jvp", "double-backward"):
        torch.testing.assert_close(obj.hvp(v, method=method), H @ v, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(obj.hvp_operator(method="retained-graph")(v), H @ v, rtol=1e-10, atol=1e-12)
    loss, err = obj.loss_and_error()
    torch.testing.assert_close(loss, obj.loss(), rtol=1e-14, atol=0)
    torch.testing.assert_close(err, obj.error(), rtol=1e-14, atol=0)
    assert obj.loss_spec.units == "nats"


def test_mse_regression_objective_matches_dense_hessian(f64):
    model = tiny_mlp().double()
    x, _ = data(11, (5,))
    target = torch.randn(11, 3, generator=torch.Generator().manual_seed(1))
    obj = Objective(model, (x, target), batch_size=4, loss="mse")
    f = loss_of_theta(model, x, lambda z: ((z - target) ** 2).mean())
    theta = flat_params(model)
    H = torch.autograd.functional.hessian(f, theta)
    torch.testing.assert_close(obj.loss(), f(theta), rtol=1e-13, atol=0)  # exact mean of 4, 4, 3
    v = torch.randn(obj.numel, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(obj.hvp(v), H @ v, rtol=1e-10, atol=1e-12)
    loss, err = obj.loss_and_error()
    assert err is None and not obj.class_targets  # no classification error for float targets
    with pytest.raises(ValueError, match="class-index targets"):
        obj.error()
    # A user callable gives the same function; a wrong target shape is named.
    same = Objective(model, (x, target), batch_size=4, loss=lambda z, t: F.mse_loss(z, t))
    torch.testing.assert_close(same.loss(), obj.loss(), rtol=1e-14, atol=0)
    # torch's own MSE through forward-over-reverse fails inside torch 2.13: a clear error naming the way out.
    torch_mse = Objective(model, (x, target), batch_size=4, loss=nn.MSELoss())
    torch.testing.assert_close(torch_mse.hvp(v, method="double-backward"), H @ v, rtol=1e-10, atol=1e-12)
    with pytest.raises(RuntimeError, match="use method='double-backward'"):
        torch_mse.hvp(v, method="jvp")
    with pytest.raises(LossError, match=r"targets of shape \(11, 2\) for outputs of shape \(4, 3\)|\(4, 2\)"):
        Objective(model, (x, target[:, :2]), batch_size=4, loss="mse").loss()
