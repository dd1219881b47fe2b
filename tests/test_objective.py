"""Objective: exact data-set means, gradients and HVPs against dense float64 references."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from reference import PartlyUsed, data, flat_params, reference_loss, tiny_bn_cnn, tiny_mlp
from torch import nn

from landscape.data import ArrayDataset
from landscape.objective import NonFiniteLossError, Objective
from landscape.params import GroupError


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()]


def assert_unchanged(model, snap):
    state, flags = snap
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert [m.training for m in model.modules()] == flags


@pytest.mark.parametrize("make,shape", [(tiny_mlp, (5,)), (tiny_bn_cnn, (1, 6, 6))])
def test_loss_grad_hvp_match_dense_hessian(f64, make, shape):
    model = make().double()
    model.train()  # the objective must evaluate in eval mode regardless, and restore this
    snap = snapshot(model)
    x, y = data(23, shape)
    obj = Objective(model, (x, y), batch_size=7)  # batches 7, 7, 7, 2: exact mean needs weights
    assert obj.batch_sizes == [7, 7, 7, 2] and obj.num_samples == 23
    f = reference_loss(model, x, y)
    theta = flat_params(model)
    assert torch.equal(obj.theta0, theta)
    H = torch.func.hessian(f)(theta)
    assert obj.numel < 2000
    torch.testing.assert_close(obj.loss(), f(theta), rtol=1e-13, atol=0)
    torch.testing.assert_close(obj.grad(), torch.func.grad(f)(theta), rtol=1e-12, atol=1e-14)
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        v = torch.randn(obj.numel, generator=gen)
        torch.testing.assert_close(obj.hvp(v), H @ v, rtol=1e-10, atol=1e-12)
    # At another point too (theta is an argument, not state).
    t2 = theta + 0.1 * torch.randn(obj.numel, generator=gen)
    torch.testing.assert_close(obj.loss(t2), f(t2), rtol=1e-13, atol=0)
    torch.testing.assert_close(obj.hvp(v, t2), torch.func.hessian(f)(t2) @ v, rtol=1e-10, atol=1e-12)
    assert_unchanged(model, snap)
    assert obj.calls["hvp"] == 4 * obj.num_batches


def test_single_batch_and_loss_and_grad(f64):
    model = tiny_mlp().double()
    x, y = data(10, (5,))
    obj = Objective(model, (x, y), batch_size=4)
    f = reference_loss(model, x[4:8], y[4:8])
    theta = flat_params(model)
    torch.testing.assert_close(obj.loss(batch=1), f(theta), rtol=1e-13, atol=0)
    loss, g = obj.loss_and_grad(batch=1)
    torch.testing.assert_close(loss, f(theta), rtol=1e-13, atol=0)
    torch.testing.assert_close(g, torch.func.grad(f)(theta), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(obj.loss(batch=-1), reference_loss(model, x[8:], y[8:])(theta))
    with pytest.raises(IndexError, match="3 batches"):
        obj.loss(batch=3)


def test_norm_group_is_the_hessian_block(f64):
    model = tiny_bn_cnn().double()
    x, y = data(12, (1, 6, 6))
    obj = Objective(model, (x, y), batch_size=5, params="norm")
    assert obj.names == ["1.weight", "1.bias"] and obj.numel == 6
    theta = flat_params(model)
    H = torch.func.hessian(reference_loss(model, x, y))(theta)
    # Offsets of BatchNorm gamma/beta in the flat vector of all parameters.
    start = model[0].weight.numel() + model[0].bias.numel()
    block = H[start : start + 6, start : start + 6]
    dense = torch.stack([obj.hvp(e) for e in torch.eye(6)], dim=1)
    torch.testing.assert_close(dense, block, rtol=1e-10, atol=1e-12)


def test_hvp_methods_agree(f64):
    model = tiny_bn_cnn().double()
    x, y = data(12, (1, 6, 6))
    obj = Objective(model, (x, y), batch_size=5)
    v = torch.randn(obj.numel, generator=torch.Generator().manual_seed(0))
    ref = obj.hvp(v)
    for method in ("jvp", "linearize", "double-backward", "retained-graph"):
        op = obj.hvp_operator(method=method)
        torch.testing.assert_close(op(v), ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(op(2 * v), 2 * ref, rtol=1e-10, atol=1e-12)  # reusable
    torch.testing.assert_close(obj.hvp_operator(batch=0, method="linearize")(v), obj.hvp(v, batch=0))
    torch.testing.assert_close(obj.hvp_operator(batch=0, method="retained-graph")(v), obj.hvp(v, batch=0))
    with pytest.raises(ValueError, match="accepted: jvp"):
        obj.hvp_operator(method="lanczos")


def test_unused_parameters_give_zeros(f64):
    model = PartlyUsed().double()
    x, y = data(9, (4,))
    obj = Objective(model, (x, y), batch_size=4)
    v = torch.ones(obj.numel)
    g, hv = obj.grad(), obj.hvp(v)
    n_used = 15
    assert torch.all(g[n_used:] == 0) and torch.all(hv[n_used:] == 0)
    assert g[:n_used].abs().sum() > 0 and hv[:n_used].abs().sum() > 0
    for method in ("linearize", "double-backward", "retained-graph"):
        torch.testing.assert_close(obj.hvp_operator(method=method)(v), hv)
    only_unused = Objective(model, (x, y), params="glob:unused.*")
    assert torch.all(only_unused.hvp(torch.ones(only_unused.numel)) == 0)
    assert torch.all(only_unused.hvp_operator(method="retained-graph")(torch.ones(only_unused.numel)) == 0)
    assert torch.all(only_unused.grad() == 0)


def test_bn_train_mode_is_a_different_matrix_and_never_drifts(f64):
    model = tiny_bn_cnn().double()
    snap = snapshot(model)
    x, y = data(12, (1, 6, 6))
    obj = Objective(model, (x, y), batch_size=5, bn_mode="train")
    first = obj.loss()
    for _ in range(2):
        obj.hvp(torch.ones(obj.numel))
        obj.grad()
    assert torch.equal(obj.loss(), first)  # copied buffers: the function does not drift
    assert_unchanged(model, snap)

    # Reference: per-batch train-mode losses weighted by batch size. (torch.func.hessian,
    # which vmaps, gets train-mode BatchNorm wrong on torch 2.13; reverse-over-reverse is right.)
    theta = flat_params(model)
    f = reference_loss(model, x, y, bn_mode="train", batch_size=5)

    torch.testing.assert_close(first, f(theta), rtol=1e-13, atol=0)
    H = torch.autograd.functional.hessian(f, theta)
    v = torch.randn(obj.numel, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(obj.hvp(v), H @ v, rtol=1e-10, atol=1e-12)
    H_eval = torch.func.hessian(reference_loss(model, x, y))(theta)
    assert (H - H_eval).abs().max() > 1e-3


def test_model_restored_after_exception(f64):
    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)
            self.bn = nn.BatchNorm1d(2)
            self.drop = nn.Dropout(0.5)
            self.armed = False

        def forward(self, x):
            if self.armed:
                raise RuntimeError("boom")
            return self.drop(self.bn(self.lin(x)))

    model = Boom().double()
    model.train()
    model.drop.eval()  # a mixed mode must be restored exactly
    x, y = data(6, (3,), classes=2)
    obj = Objective(model, (x, y), bn_mode="train")
    snap = snapshot(model)
    # Dropout stays off in both modes: the objective is deterministic.
    assert torch.equal(obj.loss(), obj.loss())
    model.armed = True
    with pytest.raises(RuntimeError, match="boom"):
        obj.hvp(torch.ones(obj.numel))
    assert_unchanged(model, snap)


def test_logit_normalize_and_mse(f64):
    model = tiny_mlp().double()
    x, y = data(8, (5,))
    with torch.no_grad():
        z = model(x)
    zn = z - z.mean(-1, keepdim=True)
    zn = zn / zn.norm(dim=-1, keepdim=True)
    obj = Objective(model, (x, y), batch_size=3, logit_normalize=True)
    torch.testing.assert_close(obj.logits(), zn)
    torch.testing.assert_close(obj.loss(), F.cross_entropy(zn, y))
    mse = Objective(model, (x, y), batch_size=3, loss="mse")
    torch.testing.assert_close(mse.loss(), ((z - F.one_hot(y, 3)) ** 2).mean())
    # Constant logits: the 1e-10 floor keeps the normalized logits at 0, not NaN.
    const = nn.Linear(5, 3).double()
    with torch.no_grad():
        const.weight.zero_()
        const.bias.fill_(2.0)
    zero = Objective(const, (x, y), logit_normalize=True)
    assert torch.equal(zero.logits(), torch.zeros(8, 3))
    assert torch.isfinite(zero.grad()).all()


def test_error_rate(f64):
    model = tiny_mlp().double()
    x, y = data(11, (5,))
    obj = Objective(model, (x, y), batch_size=4)
    with torch.no_grad():
        expected = (model(x).argmax(-1) != y).double().mean()
    torch.testing.assert_close(obj.error(), expected)
    assert obj.logits(batch=2).shape == (3, 3)


def test_dtype_casts_copies_only():
    model = tiny_bn_cnn()  # float32
    x, y = data(10, (1, 6, 6))
    obj = Objective(model, (x, y), batch_size=4, dtype=torch.float64)
    assert obj.theta0.dtype == torch.float64
    assert all(p.dtype == torch.float32 for p in model.parameters())
    ref = copy.deepcopy(model).double()
    f = reference_loss(ref, x.double(), y)
    theta = flat_params(ref)
    torch.testing.assert_close(obj.loss(), f(theta), rtol=1e-13, atol=0)
    v = torch.randn(obj.numel, dtype=torch.float64)
    torch.testing.assert_close(obj.hvp(v), torch.func.hessian(f)(theta) @ v, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="dtype"):
        Objective(model, (x, y), dtype="float128")


def test_data_forms_agree(f64):
    model = tiny_mlp().double()
    x, y = data(20, (5,))
    ds = ArrayDataset(x, y, num_classes=3)
    a = Objective(model, ds, batch_size=6, max_samples=15)
    b = Objective(model, (x, y), batch_size=6, max_samples=15)
    c = Objective(model, ds.batches(4), batch_size=6, max_samples=15)
    assert a.batch_sizes == b.batch_sizes == c.batch_sizes == [6, 6, 3]
    for o in (b, c):
        for (xa, ya), (xo, yo) in zip(a.batches(), o.batches()):
            assert torch.equal(xa, xo) and torch.equal(ya, yo)
    assert torch.equal(a.loss(), c.loss())
    one = Objective(model, ds, batch_size=None)
    assert one.batch_sizes == [20]
    with pytest.raises(TypeError, match="accepted"):
        Objective(model, 3)


def test_flatten_unflatten_roundtrip(f64):
    model = tiny_bn_cnn().double()
    obj = Objective(model, data(4, (1, 6, 6)), params="weights")
    assert obj.names == ["0.weight", "4.weight"]
    parts = obj.unflatten(obj.theta0)
    assert [t.shape for t in parts.values()] == obj.shapes
    assert torch.equal(parts["4.weight"], model[4].weight.detach())
    assert torch.equal(obj.flatten(parts), obj.theta0)
    assert torch.equal(obj.flatten(list(parts.values())), obj.theta0)
    with pytest.raises(ValueError, match=f"length {obj.numel}"):
        obj.loss(torch.zeros(3))


def test_bad_input_errors():
    model = tiny_mlp()
    xy = data(4, (5,))
    with pytest.raises(GroupError, match="selects no parameters"):
        Objective(model, xy, params="norm")
    with pytest.raises(ValueError, match="accepted: eval, train"):
        Objective(model, xy, bn_mode="training")
    with pytest.raises(ValueError, match="accepted: ce, mse"):
        Objective(model, xy, loss="nll")
    with pytest.raises(ValueError, match="batch_size"):
        Objective(model, xy, batch_size=0)
    bad = tiny_mlp()
    with torch.no_grad():
        bad[0].weight[0, 0] = float("nan")
    obj = Objective(bad, xy)
    with pytest.raises(NonFiniteLossError, match="nan"):
        obj.check_finite()
    assert Objective(model, xy).check_finite() > 0
