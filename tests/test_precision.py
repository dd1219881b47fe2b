"""Mixed precision for SAM and MSAM: GradScaler unscaling, skipped inf steps, bf16/fp16 on CPU."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape.optim import MSAM, SAM
from landscape.precision import PRECISIONS, Precision, all_finite


def net(seed=0, norm=nn.BatchNorm1d):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), norm(16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))


def batch(n=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def sam(model, **kw):
    return SAM(model, torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9, **kw)


def msam(model):
    return MSAM(model, torch.optim.SGD, rho=0.5, lr=0.1, momentum=0.9, weight_decay=1e-2)


def run(make_opt, steps=3, prec="fp32", scaler=None, seed=0, **kw):
    model = net(seed)
    opt = make_opt(model, **kw)
    p = Precision.make(prec, "cpu")
    scaler = p.scaler if scaler is None else scaler
    x, y = batch()
    for _ in range(steps):
        opt.train_step(model, x, y, F.cross_entropy, autocast=p.autocast, scaler=scaler)
    return model, opt


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_precision_make_and_bad_name():
    assert PRECISIONS == ("fp32", "bf16", "fp16")
    assert Precision.make("fp32", "cpu").scaler is None
    fp16 = Precision.make("fp16", "cpu")
    assert isinstance(fp16.scaler, torch.amp.GradScaler) and fp16.scaler.is_enabled()
    with fp16.autocast():
        assert nn.Linear(2, 2)(torch.randn(1, 2)).dtype == torch.float16
    with pytest.raises(ValueError, match="precision='fp8'.*fp32, bf16, fp16"):
        Precision.make("fp8", "cpu")
    assert bool(all_finite([torch.ones(2)])) and not bool(all_finite([torch.tensor([1.0, math.nan])]))


@pytest.mark.parametrize("make_opt,kw", [(sam, {"variant": "fisher"}), (sam, {"variant": "fisher", "mask": "norm", "m": 8}),
                                        (sam, {"variant": "asam-el-linf"}), (msam, {})])
def test_grad_scaler_in_fp32_equals_no_scaler(make_opt, kw):
    """A GradScaler (power-of-two scale) without autocast changes nothing: the ascent gradient is
    unscaled before its norm is taken, and the descent gradient before the base step. Fisher-SAM's
    T depends on g itself, and MSAM adds weight decay's shift term to the gradient, so a missing
    unscale would change their steps (p=2 SAM's g/||g|| would not notice)."""
    ref, _ = run(make_opt, **kw)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    got, _ = run(make_opt, scaler=scaler, **kw)
    torch.testing.assert_close(flat(got), flat(ref), rtol=1e-6, atol=1e-7)
    assert scaler.get_scale() == 2.0**12  # no inf seen, growth interval not reached


@pytest.mark.parametrize("make_opt", [sam, msam])
@pytest.mark.parametrize("prec,tol", [("fp16", 5e-3), ("bf16", 4e-2)])
def test_low_precision_close_to_fp32(make_opt, prec, tol):
    """fp16 (autocast + GradScaler) and bf16 (autocast) on CPU: the update of 3 steps is within the
    formats' rounding (fp16: 11-bit, bf16: 8-bit mantissa) of the fp32 update."""
    w0 = flat(net())
    ref, _ = run(make_opt)
    got, opt = run(make_opt, prec=prec)
    d_ref, d_got = flat(ref) - w0, flat(got) - w0
    rel = float((d_got - d_ref).norm() / d_ref.norm())
    assert rel < tol, rel
    assert not bool(opt.last_stats["skipped"])


def inject_inf(param, on_call):
    """A hook that makes ``param``'s gradient inf in the ``on_call``-th backward pass (0-based)."""
    calls = [0]

    def hook(g):
        calls[0] += 1
        return torch.full_like(g, math.inf) if calls[0] - 1 == on_call else g

    return param.register_hook(hook)


@pytest.mark.parametrize("which", ["ascent", "descent"])
def test_fp16_sam_skips_step_with_inf_gradient(which):
    model = net()
    opt = sam(model, mask="norm")
    x, y = batch()
    p = Precision.make("fp16", "cpu")
    opt.train_step(model, x, y, F.cross_entropy, autocast=p.autocast, scaler=p.scaler)  # momentum exists
    w = [t.detach().clone() for t in model.parameters()]
    mom = [opt.state[t]["momentum_buffer"].clone() for t in model.parameters()]
    scale = p.scaler.get_scale()
    # the BatchNorm gamma is in the mask, so its ascent gradient exists in pass 0
    handle = inject_inf(model[1].weight, 0 if which == "ascent" else 1)
    loss, logits = opt.train_step(model, x, y, F.cross_entropy, autocast=p.autocast, scaler=p.scaler)
    handle.remove()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), w))  # weights bit for bit
    assert all(torch.equal(opt.state[t]["momentum_buffer"], m) for t, m in zip(model.parameters(), mom))
    assert p.scaler.get_scale() == scale / 2  # the scaler saw the inf
    assert bool(opt.last_stats["skipped"])
    assert logits.shape == (32, 3) and math.isfinite(float(loss)) and not opt.perturbed
    opt.train_step(model, x, y, F.cross_entropy, autocast=p.autocast, scaler=p.scaler)  # training goes on
    assert not all(torch.equal(a, b) for a, b in zip(model.parameters(), w))


def test_fp16_sam_skip_inside_m_sharpness_returns_whole_batch():
    model = net()
    opt = sam(model, m=8)
    x, y = batch()
    p = Precision.make("fp16", "cpu")
    w = flat(model)
    handle = inject_inf(model[0].weight, 2)  # the second chunk's ascent pass
    loss, logits = opt.train_step(model, x, y, F.cross_entropy, autocast=p.autocast, scaler=p.scaler)
    handle.remove()
    assert torch.equal(flat(model), w) and logits.shape == (32, 3) and bool(opt.last_stats["skipped"])
    assert not opt.state  # the base optimizer never stepped


def test_fp16_msam_skips_step_with_inf_gradient():
    model = net()
    opt = msam(model)
    x, y = batch()
    p = Precision.make("fp16", "cpu")
    for _ in range(2):
        opt.train_step(model, x, y, F.cross_entropy, autocast=p.autocast, scaler=p.scaler)
    w = flat(model)
    mom = [opt.state[t]["momentum_buffer"].clone() for t in model.parameters()]
    handle = inject_inf(model[0].weight, 0)
    opt.train_step(model, x, y, F.cross_entropy, autocast=p.autocast, scaler=p.scaler)
    handle.remove()
    assert torch.equal(flat(model), w) and not opt.shifted  # unshifted and not updated
    assert all(torch.equal(opt.state[t]["momentum_buffer"], m) for t, m in zip(model.parameters(), mom))
    assert bool(opt.last_stats["skipped"])


def test_bf16_sam_on_cpu_with_layernorm():
    model, opt = run(sam, prec="bf16", mask="norm")
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    assert torch.isfinite(flat(model)).all() and set(opt.last_stats) >= {"eps_norm", "grad_cosine", "loss_perturbed"}
    ln = copy.deepcopy(net(norm=nn.LayerNorm))
    opt = sam(ln)
    p = Precision.make("bf16", "cpu")
    x, y = batch()
    loss, logits = opt.train_step(ln, x, y, F.cross_entropy, autocast=p.autocast)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32


def test_trainer_fp16_checkpoints_and_resumes_the_loss_scale(tmp_path):
    from landscape.checkpoint import load_checkpoint
    from landscape.config import SAMConfig, TrainConfig
    from landscape.trainer import train

    def cfg(epochs):
        return TrainConfig(dataset="synthetic", dataset_kwargs={"num_samples": 64}, model="mlp",
                           model_kwargs={"width": 8}, epochs=epochs, batch_size=32, precision="fp16",
                           sam=SAMConfig(rho=0.05, variant="fisher"), out=str(tmp_path / "run"))

    run = train(cfg(1), progress=False)
    raw = torch.load(run / "last.pt", weights_only=True)
    assert raw["rng"]["grad_scaler"]["scale"] == 65536.0
    raw["rng"]["grad_scaler"]["scale"] = 1024.0  # as if overflows had lowered it
    torch.save(raw, run / "last.pt")
    train(cfg(2), progress=False)  # resumes; 2 more steps cannot grow the scale (interval 2000)
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt.epoch == 2 and ckpt.raw["rng"]["grad_scaler"]["scale"] == 1024.0
