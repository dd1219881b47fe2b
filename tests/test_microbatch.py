"""Micro-batches: a batch evaluated in pieces is the same function (float64, ~1e-12), for every HVP method."""

from __future__ import annotations

import pytest
import torch
from reference import data, tiny_bn_cnn, tiny_mlp
from torch import nn

from landscape.analyses.hessian import hessian_spectrum
from landscape.analyses.sharpness import sharpness
from landscape.analyses.slices import loss_slice
from landscape.hvp import METHODS
from landscape.objective import Objective

TOL = 1e-12


def close(a: torch.Tensor, b: torch.Tensor, tol: float = TOL) -> bool:
    return float((a - b).abs().max()) <= tol * max(1.0, float(b.abs().max()))


def pair(model, xy, batch_size, micro, **kw):
    whole = Objective(model, xy, batch_size=batch_size, dtype=torch.float64, **kw)
    parts = Objective(model, xy, batch_size=batch_size, dtype=torch.float64, micro_batch_size=micro, **kw)
    return whole, parts


# 17 examples: one batch of 17 in pieces 4,4,4,4,1; batches 7,7,3 in pieces 3,3,1 / 3,3,1 / 3.
SPLITS = [(None, 4, [[4, 4, 4, 4, 1]]), (7, 3, [[3, 3, 1], [3, 3, 1], [3]])]


@pytest.mark.parametrize("batch_size,micro,sizes", SPLITS)
@pytest.mark.parametrize("make,shape", [(tiny_mlp, (5,)), (tiny_bn_cnn, (1, 6, 6))])
def test_loss_grad_error_logits_equal_one_batch(make, shape, batch_size, micro, sizes):
    whole, parts = pair(make(), data(17, shape), batch_size, micro)
    assert parts.micro_batch_sizes == sizes and whole.micro_batch_sizes == [[b] for b in whole.batch_sizes]
    theta = whole.theta0 + 0.1 * torch.randn(whole.numel, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for batch in (None, 0, -1):
        la, ga = whole.loss_and_grad(theta, batch)
        lb, gb = parts.loss_and_grad(theta, batch)
        assert close(lb, la) and close(gb, ga), batch
        assert close(parts.loss(theta, batch), whole.loss(theta, batch))
        assert float(parts.error(theta, batch)) == pytest.approx(float(whole.error(theta, batch)), abs=1e-15)
        le, ee = parts.loss_and_error(theta, batch)
        assert close(le, la) and float(ee) == pytest.approx(float(whole.error(theta, batch)), abs=1e-15)
        assert close(parts.logits(theta, batch), whole.logits(theta, batch))
    assert parts.calls["grad"] == whole.calls["grad"]  # counts stay per batch


# linearize traces every piece once (about a second each on a CPU): one split into two pieces.
HVP_CASES = [(m, *split) for m in METHODS if m != "linearize" for split in SPLITS] + [("linearize", None, 9, [[9, 8]])]


@pytest.mark.parametrize("method,batch_size,micro,sizes", HVP_CASES)
def test_hvp_equals_one_batch_for_every_method(method, batch_size, micro, sizes):
    whole, parts = pair(tiny_bn_cnn(), data(17, (1, 6, 6)), batch_size, micro)
    assert parts.micro_batch_sizes == sizes
    v = torch.randn(whole.numel, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for batch in (None,) if method == "linearize" else (None, 1 if batch_size else 0):
        want = whole.hvp_operator(batch=batch, method=method)(v)
        got = parts.hvp_operator(batch=batch, method=method)(v)
        assert close(got, want), (method, batch, float((got - want).abs().max()))
        if method in ("jvp", "double-backward"):
            assert close(parts.hvp(v, batch=batch, method=method), want)


def test_auto_method_keeps_memory_constant_with_pieces():
    whole, parts = pair(tiny_mlp(), data(17, (5,)), None, 4)
    assert whole.resolve_hvp_method("auto") == "retained-graph"
    assert parts.resolve_hvp_method("auto") == "double-backward"  # retained graphs would keep every piece
    assert Objective(tiny_mlp(), data(17, (5,)), batch_size=None, micro_batch_size=17).resolve_hvp_method() \
        == "retained-graph"


def test_train_mode_batchnorm_refuses_smaller_pieces_and_bad_values():
    xy = data(17, (1, 6, 6))
    with pytest.raises(ValueError, match=r"micro_batch_size=4 with bn_mode='train' is not accepted"):
        Objective(tiny_bn_cnn(), xy, batch_size=8, bn_mode="train", micro_batch_size=4)
    Objective(tiny_bn_cnn(), xy, batch_size=8, bn_mode="train", micro_batch_size=8)  # one piece per batch: fine
    with pytest.raises(ValueError, match="micro_batch_size must be a positive int or None"):
        Objective(tiny_mlp(), data(4, (5,)), micro_batch_size=0)


def test_channels_last_restaging_keeps_pieces():
    whole, parts = pair(tiny_bn_cnn(), data(17, (1, 6, 6)), None, 4)
    assert parts.channels_last()
    assert parts.micro_batch_sizes == [[4, 4, 4, 4, 1]]
    assert close(parts.loss_and_grad()[1], whole.loss_and_grad()[1])


def test_analyses_with_micro_batches_equal_without(f64):
    model, xy = tiny_bn_cnn(), data(24, (1, 6, 6))
    kw = dict(top_k=2, trace_samples=9, slq_runs=1, slq_steps=6, grid_points=20, dtype="float64",
              hvp_method="double-backward", progress=False)
    a = hessian_spectrum(model, xy, batch_size=None, **kw)
    b = hessian_spectrum(model, xy, batch_size=None, micro_batch_size=5, **kw)
    assert close(torch.as_tensor(b.eigenvalues.values), torch.as_tensor(a.eigenvalues.values), 1e-10)
    assert float(b.trace) == pytest.approx(float(a.trace), rel=1e-10)
    assert b.attrs["micro_batch_size"] == 5 and a.attrs["micro_batch_size"] == 0
    s1 = sharpness(model, xy, kind="one-step", m=12, n=24, rho=0.05, dtype="float64", progress=False)
    s2 = sharpness(model, xy, kind="one-step", m=12, n=24, rho=0.05, dtype="float64", micro_batch_size=5,
                   progress=False)
    assert abs(s1.sharpness - s2.sharpness).max() < 1e-12  # m-sharpness stays per batch of m
    d = [{n: torch.ones_like(p) for n, p in model.named_parameters()}]
    l1 = loss_slice(model, xy, d, grid="-1:1:3", dtype="float64", progress=False)
    l2 = loss_slice(model, xy, d, grid="-1:1:3", dtype="float64", micro_batch_size=5, progress=False)
    assert abs(l1.loss - l2.loss).max() < 1e-12 and abs(l1.accuracy - l2.accuracy).max() < 1e-12


class _Big(nn.Module):
    """Cross-entropy that runs out of memory for pieces larger than ``limit`` examples, as a device would."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit
        self.sizes: list[int] = []

    def forward(self, z, y):
        self.sizes.append(int(y.shape[0]))
        if y.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return nn.functional.cross_entropy(z, y)


def test_pieces_are_what_the_loss_sees():
    loss = _Big(limit=4)
    obj = Objective(tiny_mlp(), data(17, (5,)), batch_size=None, micro_batch_size=4, loss=loss)
    obj.hvp(torch.ones(obj.numel), method="double-backward")
    assert loss.sizes == [4, 4, 4, 4, 1]


@pytest.mark.parametrize("method", ["jvp", "double-backward"])
def test_out_of_memory_halves_the_pieces_and_gives_the_same_numbers(method, f64):
    xy = data(17, (5,))
    ref = Objective(tiny_mlp(), xy, batch_size=None, micro_batch_size=4)
    v = torch.randn(ref.numel, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    loss = _Big(limit=5)
    obj = Objective(tiny_mlp(), xy, batch_size=None, loss=loss)  # one piece of 17: too big
    with pytest.warns(RuntimeWarning, match=r"out of memory on cpu; .* micro_batch_size=\d"):  # 8, then 4
        got = obj.hvp(v, method=method)
    assert obj.micro_batch_size == 4 and obj.micro_batch_sizes == [[4, 4, 4, 4, 1]]
    assert close(got, ref.hvp(v, method=method)) and obj.calls["hvp"] == 1
    assert close(obj.loss_and_grad()[1], ref.loss_and_grad()[1])  # later calls start at the new size
    assert loss.sizes[:2] == [17, 8]
    with pytest.raises(torch.OutOfMemoryError), pytest.warns(RuntimeWarning):  # one example still too big
        Objective(tiny_mlp(), xy, batch_size=None, loss=_Big(limit=0)).loss()
    with pytest.raises(torch.OutOfMemoryError, match="hvp_method='double-backward'"):  # never split silently
        Objective(tiny_mlp(), xy, batch_size=None, loss=_Big(limit=5)).hvp_operator(method="retained-graph")
