"""SAM family: perturbations against SAM-ON Table 9 / Eq. 5 computed independently here."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape.config import SAMConfig, TrainConfig
from landscape.models import build_model
from landscape.optim import SAM, build_optimizer, train_step
from landscape.params import GroupError

NORM_W = {"b1.1.weight", "b2.1.weight", "b3.1.weight"}  # gamma of BatchNorm, LayerNorm, BatchNorm
NORM_B = {"b1.1.bias", "b2.1.bias", "b3.1.bias"}  # beta
VARIANTS = ["sam", "asam-el-l2", "asam-el-l2-orig", "asam-el-linf", "asam-layer-l2", "fisher"]
DEFAULT_ETA = {"sam": 0.0, "asam-el-l2": 0.0, "asam-el-l2-orig": 0.01, "asam-el-linf": 0.0,
               "asam-layer-l2": 0.0, "fisher": 1.0}  # SAM-ON Table 9
MASKS = ["all", "norm", "no-norm", "random", "blocks", "glob:head.*|b1.0.weight"]


class Tiny(nn.Module):
    """Three stages with BatchNorm, LayerNorm, BatchNorm, and a linear head."""

    def __init__(self):
        super().__init__()
        self.b1 = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh())
        self.b2 = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Tanh())
        self.b3 = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Tanh())
        self.head = nn.Linear(3, 2)
        self.stages = ("b1", "b2", "b3")

    def forward(self, x):
        return self.head(self.b3(self.b2(self.b1(x))))


def tiny(seed=0):
    torch.manual_seed(seed)
    model = Tiny()
    with torch.no_grad():  # gamma = 1, beta = 0 by default would make |w| degenerate
        for n, p in model.named_parameters():
            if n in NORM_W | NORM_B:
                p.copy_(torch.randn_like(p))
    return model


def data(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randint(0, 2, (n,), generator=g)


def grads_at(model, x, y, delta=None):
    """Loss gradient of a copy of ``model`` (train mode) at its weights + ``delta``."""
    m = copy.deepcopy(model)
    if delta:
        with torch.no_grad():
            for n, p in m.named_parameters():
                p.add_(delta[n])
    loss = F.cross_entropy(m(x), y)
    return dict(zip([n for n, _ in m.named_parameters()], torch.autograd.grad(loss, list(m.parameters()))))


def ref_T(variant, name, w, g, eta):
    """SAM-ON Table 9, written out independently."""
    if variant == "sam":
        return torch.ones_like(w)
    if variant in ("asam-el-l2", "asam-el-linf"):
        return w.abs() + eta
    if variant == "asam-el-l2-orig":
        is_bias = name in NORM_B or (name not in NORM_W and w.ndim == 1)
        return torch.full_like(w, 1 + eta) if is_bias else w.abs() + eta
    if variant == "asam-layer-l2":
        return torch.full_like(w, float(w.norm()) + eta)
    return (1 + eta * g**2) ** -0.5


def ref_mask(model, mask, opt):
    names = [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())
    if mask == "random":
        got = opt.mask_tensors()
        return {n: got.get(n, torch.zeros_like(params[n])) for n in names}
    chosen = {
        "all": set(names),
        "norm": NORM_W | NORM_B,
        "no-norm": set(names) - NORM_W - NORM_B,
        "blocks": {"b3.1.weight", "b3.1.bias"},
        "glob:head.*|b1.0.weight": {"head.weight", "head.bias", "b1.0.weight"},
    }[mask]
    return {n: torch.full_like(params[n], float(n in chosen)) for n in names}


def ref_eps(variant, rho, T, g):
    if variant == "asam-el-linf":
        return {n: rho * T[n] * torch.sign(g[n]) for n in g}
    den = torch.sqrt(sum(((T[n] * g[n]) ** 2).sum() for n in g))
    return {n: rho * T[n] ** 2 * g[n] / den for n in g}


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_first_step_matches_table9(f64, variant, mask):
    check_first_and_second_step(variant, mask, eta=None)


@pytest.mark.parametrize("variant", VARIANTS[1:])
def test_first_step_with_explicit_eta(f64, variant):
    check_first_and_second_step(variant, "all", eta=0.3)
    check_first_and_second_step(variant, "norm", eta=0.3)


def check_first_and_second_step(variant, mask, eta):
    model = tiny()
    x, y = data()
    rho = 0.3
    opt = SAM(model, torch.optim.SGD, rho=rho, variant=variant, mask=mask,
              blocks="B3" if mask == "blocks" else "", eta=eta, lr=0.1)
    g = grads_at(model, x, y)
    M = ref_mask(model, mask, opt)
    eta = DEFAULT_ETA[variant] if eta is None else eta
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    T = {n: ref_T(variant, n, before[n], g[n], eta) * M[n] for n in before}
    expected = ref_eps(variant, rho, T, g)

    F.cross_entropy(model(x), y).backward()
    opt.first_step()
    for n, p in model.named_parameters():
        eps = p.detach() - before[n]
        torch.testing.assert_close(eps, expected[n], rtol=1e-9, atol=1e-13)
        outside = M[n] == 0
        assert torch.equal(p.detach()[outside], before[n][outside]), f"{n} moved outside the mask"
    # radius in the T-normalized norm (entries with T > 0)
    scaled = torch.cat([((p.detach() - before[n]) / T[n])[T[n] > 0] for n, p in model.named_parameters()])
    norm = scaled.abs().max() if variant == "asam-el-linf" else scaled.norm()
    assert float(norm) == pytest.approx(rho, rel=1e-10)

    # second_step: exact weights back, then the base step with the gradient at w + e
    g2 = grads_at(model, x, y)  # model is at w + e now
    opt.zero_grad()
    for n, p in model.named_parameters():
        p.grad = g2[n].clone()
    opt.second_step()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), before[n] - 0.1 * g2[n], rtol=0, atol=1e-15)


def test_second_step_restores_exact_weights(f64):
    model = tiny()
    x, y = data()
    opt = SAM(model, torch.optim.SGD, rho=0.5, variant="asam-el-l2", lr=0.0)
    before = [p.detach().clone() for p in model.parameters()]
    F.cross_entropy(model(x), y).backward()
    opt.first_step(zero_grad=True)
    assert opt.perturbed and not all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    F.cross_entropy(model(x), y).backward()
    opt.second_step(zero_grad=True)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))  # bit for bit
    assert not opt.perturbed and all(p.grad is None for p in model.parameters())


def test_random_mask_is_seeded_and_sized_like_norm():
    model = tiny()
    k = sum(p.numel() for n, p in model.named_parameters() if n in NORM_W | NORM_B)

    def full_mask(seed):
        got = SAM(model, torch.optim.SGD, rho=0.1, mask="random", mask_seed=seed, lr=0.1).mask_tensors()
        return torch.cat([got.get(n, torch.zeros_like(p)).flatten() for n, p in model.named_parameters()])

    a, b, c = full_mask(0), full_mask(0), full_mask(1)
    assert int(a.sum()) == int(c.sum()) == k and set(a.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_train_step_equals_manual_two_pass_and_restores_requires_grad(f64):
    """The SAM-ON saving (no ascent gradients outside the mask) does not change the step."""
    x, y = data()
    results = []
    for manual in (False, True):
        model = tiny()
        opt = SAM(model, torch.optim.SGD, rho=0.2, variant="asam-el-linf", mask="blocks", blocks="B2+B3",
                  lr=0.1, momentum=0.9, weight_decay=1e-3)
        for _ in range(3):
            if manual:
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.first_step(zero_grad=True)
                F.cross_entropy(model(x), y).backward()
                opt.second_step(zero_grad=True)
            else:
                loss, logits = train_step(model, opt, x, y, F.cross_entropy)
                assert logits.shape == (8, 2) and not loss.requires_grad
        assert all(p.requires_grad for p in model.parameters())
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


def test_ascent_pass_skips_gradients_outside_mask():
    model = tiny()
    x, y = data(n=8)
    opt = SAM(model, torch.optim.SGD, rho=0.1, mask="blocks", blocks="B3", lr=0.1)
    with opt.ascent_grads_only():
        F.cross_entropy(model(x.float()), y).backward()
        flags = {n: p.requires_grad for n, p in model.named_parameters()}
    assert {n for n, f in flags.items() if f} == {"b3.1.weight", "b3.1.bias"}
    assert {n for n, p in model.named_parameters() if p.grad is not None} == {"b3.1.weight", "b3.1.bias"}
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(RuntimeError), opt.ascent_grads_only():
        raise RuntimeError("boom")
    assert all(p.requires_grad for p in model.parameters())


def test_step_closure_equals_train_step(f64):
    x, y = data()
    outs = []
    for use_closure in (False, True):
        model = tiny()
        opt = SAM(model, torch.optim.SGD, rho=0.1, variant="fisher", mask="norm", lr=0.1, momentum=0.9)
        for _ in range(2):
            if use_closure:
                def closure(model=model):
                    loss = F.cross_entropy(model(x), y)
                    loss.backward()
                    return loss
                opt.step(closure)
            else:
                train_step(model, opt, x, y, F.cross_entropy)
        outs.append([p.detach().clone() for p in model.parameters()] + [b.clone() for b in model.buffers()])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


@pytest.mark.parametrize("variant,mask", [("sam", "all"), ("asam-el-l2", "norm"), ("fisher", "no-norm")])
def test_m_sharpness_is_mean_of_per_chunk_sam_gradients(f64, variant, mask):
    model = tiny()
    x, y = data(n=12)
    rho, lr, m = 0.2, 0.1, 4
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    eta = DEFAULT_ETA[variant]
    M = ref_mask(model, mask, None)
    mean_g = {n: torch.zeros_like(t) for n, t in w.items()}
    for c in range(3):  # one chunk at a time, each from the same w
        xc, yc = x[c * m:(c + 1) * m], y[c * m:(c + 1) * m]
        g = grads_at(model, xc, yc)
        T = {n: ref_T(variant, n, w[n], g[n], eta) * M[n] for n in w}
        g2 = grads_at(model, xc, yc, delta=ref_eps(variant, rho, T, g))
        for n in w:
            mean_g[n] += g2[n] / 3
    # per-chunk logits at w (BatchNorm uses each chunk's own statistics, as in m-sharpness)
    ref_logits = torch.cat([copy.deepcopy(model)(x[c * m:(c + 1) * m]) for c in range(3)]).detach()
    opt = SAM(model, torch.optim.SGD, rho=rho, variant=variant, mask=mask, m=m, lr=lr)
    loss, logits = train_step(model, opt, x, y, F.cross_entropy)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), w[n] - lr * mean_g[n], rtol=0, atol=1e-13)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-14)
    assert float(loss) == pytest.approx(float(F.cross_entropy(ref_logits, y)), rel=1e-12)


@pytest.mark.parametrize("freeze", [True, False])
def test_bn_statistics_in_second_pass(f64, freeze):
    x, y = data()
    model = tiny()
    ref = copy.deepcopy(model)
    ref(x)  # one train-mode forward at w: what the stats must be if frozen
    opt = SAM(model, torch.optim.SGD, rho=0.5, freeze_bn_stats=freeze, lr=0.1)
    train_step(model, opt, x, y, F.cross_entropy)
    bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    bn_ref = [m for m in ref.modules() if isinstance(m, nn.BatchNorm1d)]
    for a, b in zip(bn, bn_ref):
        assert int(a.num_batches_tracked) == (1 if freeze else 2)
        same = torch.equal(a.running_mean, b.running_mean) and torch.equal(a.running_var, b.running_var)
        assert same == freeze


def test_state_dict_round_trip_holds_momentum(f64, tmp_path):
    x, y = data()
    model = tiny()
    opt = SAM(model, torch.optim.SGD, rho=0.1, mask="norm", lr=0.1, momentum=0.9, weight_decay=5e-4)
    train_step(model, opt, x, y, F.cross_entropy)
    sd = opt.state_dict()
    assert len(sd["state"]) == len(list(model.parameters()))
    assert all("momentum_buffer" in s for s in sd["state"].values())
    torch.save({"m": model.state_dict(), "o": sd}, tmp_path / "c.pt")
    ck = torch.load(tmp_path / "c.pt", weights_only=True)
    model2 = tiny(seed=5)
    model2.load_state_dict(ck["m"])
    opt2 = SAM(model2, torch.optim.SGD, rho=0.1, mask="norm", lr=0.1, momentum=0.9, weight_decay=5e-4)
    opt2.load_state_dict(ck["o"])
    assert opt2.state[next(model2.parameters())]["momentum_buffer"] is not None
    opt2.param_groups[0]["lr"] = 0.05  # the trainer's lr update must reach the base optimizer
    opt.param_groups[0]["lr"] = 0.05
    assert opt2.base_optimizer.param_groups[0]["lr"] == 0.05
    train_step(model, opt, x, y, F.cross_entropy)
    train_step(model2, opt2, x, y, F.cross_entropy)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    plain = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    plain.load_state_dict(opt2.state_dict())  # the format is the base optimizer's
    # loading into the base optimizer directly (as a trainer may) keeps the wrapper in sync
    opt2.base_optimizer.load_state_dict(plain.state_dict())
    opt2.param_groups[0]["lr"] = 0.01
    assert opt2.base_optimizer.param_groups[0]["lr"] == 0.01
    assert opt2.state is opt2.base_optimizer.state
    clone = copy.deepcopy(opt2)
    assert clone.param_groups is clone.base_optimizer.param_groups


def test_build_optimizer_from_config():
    model = tiny()
    plain = build_optimizer(model, TrainConfig(optimizer="adamw", lr=1e-3))
    assert type(plain) is torch.optim.AdamW
    sam = build_optimizer(model, TrainConfig(sam=SAMConfig(variant="asam-el-l2-orig", rho=1.0, mask="blocks", blocks="B3", m=4)))
    assert isinstance(sam, SAM) and type(sam.base_optimizer) is torch.optim.SGD
    assert sam.eta == 0.01 and sam.m == 4 and len(sam.masked_parameters) == 2
    assert sam.base_optimizer.param_groups[0]["momentum"] == 0.9


def test_bad_input():
    model = tiny()
    with pytest.raises(ValueError, match="rho"):
        SAM(model, torch.optim.SGD, rho=-0.1, lr=0.1)
    with pytest.raises(ValueError, match="variant"):
        SAM(model, torch.optim.SGD, rho=0.1, variant="asam", lr=0.1)
    opt = SAM(model, torch.optim.SGD, rho=0.1, m=3, lr=0.1)
    x, y = data(n=8)
    with pytest.raises(ValueError, match="m=3 must divide the batch size 8"):
        train_step(model, opt, x.float(), y, F.cross_entropy)
    no_norm = build_model("mlp", input_shape=(3,), num_classes=2, width=4, norm="none")
    with pytest.raises(GroupError, match="no normalization layers"):
        SAM(no_norm, torch.optim.SGD, rho=0.1, mask="norm", lr=0.1)
    with pytest.raises(GroupError, match="random"):
        SAM(no_norm, torch.optim.SGD, rho=0.1, mask="random", lr=0.1)
    with pytest.raises(GroupError, match="B4"):
        SAM(model, torch.optim.SGD, rho=0.1, mask="blocks", blocks="B4", lr=0.1)
    with pytest.raises(ValueError, match="pass the model"):
        SAM(model.parameters(), torch.optim.SGD, rho=0.1, mask="norm", lr=0.1)
    with pytest.raises(ValueError, match="eta"):
        SAM(model, torch.optim.SGD, rho=0.1, eta=0.5, lr=0.1)
    with pytest.raises(ValueError, match="m must"):
        SAM(model, torch.optim.SGD, rho=0.1, m=0, lr=0.1)
    with pytest.raises(ValueError, match="closure"):
        opt.step()
    with pytest.raises(RuntimeError, match="without first_step"):
        opt.second_step()


def _backward_flops(opt, model, x, y):
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        train_step(model, opt, x, y, F.cross_entropy)
    return counter.get_total_flops()


def test_sam_on_ascent_pass_does_less_work_without_touching_requires_grad():
    """The SAM-ON saving (SAM-ON Section 4.3) comes from backward(inputs=masked): autograd skips the
    weight gradients outside the mask. It must remain, and requires_grad must never flip (DDP)."""
    model = build_model("mlp", input_shape=(32,), num_classes=4, width=64, depth=3, norm="batch")
    x, y = torch.randn(64, 32), torch.randint(0, 4, (64,))
    flags = []  # requires_grad of every parameter at every forward pass
    model.register_forward_pre_hook(lambda mod, args: flags.append(all(p.requires_grad for p in mod.parameters())))
    flops = {}
    for name, kw in {"all": {}, "norm": {"mask": "norm"}}.items():
        for ascent_all in (False, True):
            opt = SAM(model, torch.optim.SGD, rho=0.05, lr=0.0, **kw)
            opt._ascent_all = ascent_all
            flops[name, ascent_all] = _backward_flops(opt, model, x, y)
    assert flops["all", False] == flops["all", True] == flops["norm", True]
    assert flops["norm", False] < 0.85 * flops["norm", True]  # no weight-gradient matmuls in pass 1
    assert len(flags) == 8 and all(flags)


def test_last_stats_are_the_step_quantities(f64):
    model = tiny()
    x, y = data()
    rho = 0.3
    g = grads_at(model, x, y)
    norm = torch.sqrt(sum((t**2).sum() for t in g.values()))
    eps = {n: rho * t / norm for n, t in g.items()}
    g2 = grads_at(model, x, y, delta=eps)
    m2 = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in m2.named_parameters():
            p.add_(eps[n])
    loss2 = F.cross_entropy(m2(x), y).detach()
    opt = SAM(model, torch.optim.SGD, rho=rho, lr=0.1)
    train_step(model, opt, x, y, F.cross_entropy)
    st = opt.last_stats
    assert all(v.ndim == 0 for v in st.values()) and not bool(st["skipped"])
    assert float(st["eps_norm"]) == pytest.approx(rho, rel=1e-10)
    cos = sum((g[n] * g2[n]).sum() for n in g) / torch.sqrt(sum((t**2).sum() for t in g.values()) * sum((t**2).sum() for t in g2.values()))
    assert float(st["grad_cosine"]) == pytest.approx(float(cos), rel=1e-6)
    assert float(st["loss_perturbed"]) == pytest.approx(float(loss2), rel=1e-12)
    # SAM-ON: over the masked parameters only; m-sharpness: means over chunks; off: nothing
    opt = SAM(model, torch.optim.SGD, rho=rho, mask="norm", m=4, lr=0.1)
    train_step(model, opt, x, y, F.cross_entropy)
    assert float(opt.last_stats["eps_norm"]) == pytest.approx(rho, rel=1e-10)
    assert -1 <= float(opt.last_stats["grad_cosine"]) <= 1
    opt.collect_stats = False
    train_step(model, opt, x, y, F.cross_entropy)
    assert opt.last_stats == {}
