"""landscape.directions: filter normalization (Li et al. 2018), checkpoint directions and planes,
stored directions; every expectation is computed independently (loops over filters, flat vectors)."""

from __future__ import annotations

import math

import pytest
import torch
import xarray as xr
from torch import nn

import landscape as ls
from landscape import directions as D


# ------------------------------------------------------------------------------ helpers
def output_filters(module: nn.Module, w: torch.Tensor) -> list[torch.Tensor]:
    """The output filters of a weight, by brute force: one tensor per output channel."""
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        g = module.groups
        ipg, opg = w.shape[0] // g, w.shape[1]
        return [w[gi * ipg:(gi + 1) * ipg, j] for gi in range(g) for j in range(opg)]
    return [w[i] for i in range(w.shape[0])]


def snapshot(model: nn.Module):
    return (
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        {n: p.requires_grad for n, p in model.named_parameters()},
        [m.training for m in model.modules()],
    )


def assert_unchanged(model: nn.Module, snap) -> None:
    state, grads, modes = snap
    now = model.state_dict()
    assert state.keys() == now.keys()
    for k in state:
        assert torch.equal(state[k], now[k]), k
    assert grads == {n: p.requires_grad for n, p in model.named_parameters()}
    assert modes == [m.training for m in model.modules()]


def bn_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


LAYERS = {
    "linear": lambda: nn.Linear(5, 7),
    "conv2d": lambda: nn.Conv2d(3, 6, 3),
    "grouped_conv2d": lambda: nn.Conv2d(4, 6, 3, groups=2),
    "depthwise_conv2d": lambda: nn.Conv2d(4, 8, 3, groups=4),
    "conv_transpose2d": lambda: nn.ConvTranspose2d(4, 6, 3),
    "grouped_conv_transpose2d": lambda: nn.ConvTranspose2d(4, 6, 3, groups=2),
    "conv1d": lambda: nn.Conv1d(2, 3, 4),
}


# ------------------------------------------------------------------- filter normalization
@pytest.mark.parametrize("kind", list(LAYERS))
def test_filter_normalized_has_each_weight_filters_norm(kind):
    torch.manual_seed(1)
    layer = LAYERS[kind]()
    model = nn.Sequential(layer)
    d = D.random_direction(model, seed=3)
    assert list(d) == ["0.weight", "0.bias"]
    got = output_filters(layer, d["0.weight"])
    want = output_filters(layer, layer.weight.detach())
    assert len(got) == len(want) == (layer.out_channels if hasattr(layer, "out_channels") else layer.out_features)
    for fd, fw in zip(got, want):
        assert math.isclose(float(fd.norm()), float(fw.norm()), rel_tol=1e-5)
    # the filter keeps the direction of the Gaussian draw (only rescaled)
    raw = D.random_direction(model, seed=3, normalization="none")
    for fd, fr in zip(got, output_filters(layer, raw["0.weight"])):
        assert float(torch.nn.functional.cosine_similarity(fd.flatten(), fr.flatten(), dim=0)) > 1 - 1e-5
    assert torch.equal(d["0.bias"], torch.zeros_like(layer.bias))


def test_zero_weight_filter_gives_zero_filter():
    lin = nn.Linear(3, 4)
    with torch.no_grad():
        lin.weight[2] = 0
    d = D.random_direction(lin)
    assert torch.equal(d["weight"][2], torch.zeros(3))
    assert float(d["weight"][1].norm()) > 0


def test_ignore_zeroes_every_1d_parameter():
    model = bn_net()
    d = D.random_direction(model)
    for name, p in model.named_parameters():
        if p.ndim <= 1:
            assert torch.equal(d[name], torch.zeros_like(p)), name
        else:
            assert float(d[name].abs().sum()) > 0


@pytest.mark.parametrize("normalization", ["filter", "layer", "model"])
def test_one_d_filter_gives_abs_weight_exactly_once(normalization):
    model = bn_net()
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 2.0)
        model[1].bias.uniform_(-1.0, 1.0)
    raw = D.random_direction(model, seed=5, normalization="none", one_d="filter")
    d = D.random_direction(model, seed=5, normalization=normalization, one_d="filter")
    for name, p in model.named_parameters():
        if p.ndim == 1:
            assert torch.equal(d[name].abs(), p.detach().abs()), name  # not rescaled a second time
            assert torch.equal(torch.sign(d[name]), torch.sign(raw[name])), name


def test_layer_and_model_norms():
    model = bn_net()
    multi = {n: p.detach() for n, p in model.named_parameters() if p.ndim > 1}
    layer = D.random_direction(model, normalization="layer")
    for n, p in multi.items():
        assert math.isclose(float(layer[n].norm()), float(p.norm()), rel_tol=1e-5)
    whole = D.random_direction(model, normalization="model")
    w_multi = math.sqrt(sum(float(p.double().pow(2).sum()) for p in multi.values()))
    assert math.isclose(D.norm(whole), w_multi, rel_tol=1e-6)
    # one_d="filter": the 1-D part has the 1-D weights' norm, so the whole direction the group's
    whole_f = D.random_direction(model, normalization="model", one_d="filter")
    w_all = math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in model.parameters()))
    assert math.isclose(D.norm(whole_f), w_all, rel_tol=1e-6)
    # model normalization keeps the draw's shape: one common factor
    raw = D.random_direction(model, normalization="none")
    ratios = [float(whole[n].norm() / raw[n].norm()) for n in multi]
    assert max(ratios) - min(ratios) < 1e-5 * max(ratios)


def test_none_is_the_raw_gaussian_draw_and_global_rng_untouched():
    model = bn_net()
    state = torch.get_rng_state()
    d = D.random_direction(model, normalization="none", one_d="filter", seed=11)
    assert torch.equal(torch.get_rng_state(), state)
    g = torch.Generator().manual_seed(11)
    for name, p in model.named_parameters():
        assert torch.equal(d[name], torch.randn(p.shape, generator=g)), name


def test_same_seed_same_direction_different_seed_different():
    model = bn_net()
    a, b, c = (D.random_direction(model, seed=s) for s in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["0.weight"], c["0.weight"])
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    x, y = D.random_direction(model, generator=g1), D.random_direction(model, generator=g2)
    assert all(torch.equal(x[k], y[k]) for k in x)
    z = D.random_direction(model, generator=g1)  # the generator advanced
    assert not torch.equal(x["0.weight"], z["0.weight"])
    # one_d does not change the multi-dimensional part (1-D draws are always made)
    f = D.random_direction(model, seed=0, one_d="filter")
    assert torch.equal(f["0.weight"], a["0.weight"]) and torch.equal(f["4.weight"], a["4.weight"])


def test_directions_are_gaussian_not_uniform():
    big = nn.Linear(500, 400, bias=False)
    x = D.random_direction(big, normalization="none", seed=0)["weight"].double().flatten()
    n = x.numel()
    assert abs(float(x.mean())) < 5 / math.sqrt(n)
    assert abs(float(x.std()) - 1) < 0.01
    assert 0.49 < float((x < 0).double().mean()) < 0.51  # negative entries (uniform [0,1) has none)
    z = (x - x.mean()) / x.std()
    assert abs(float(z.pow(4).mean()) - 3.0) < 0.05  # kurtosis 3 (uniform: 1.8)
    assert abs(float((z.abs() < 1).double().mean()) - 0.6827) < 0.005  # the 1-sigma mass


def test_params_group_restricts_the_keys():
    model = bn_net()
    d = D.random_direction(model, params="norm", one_d="filter")
    assert list(d) == ["1.weight", "1.bias"]
    assert torch.equal(d["1.weight"].abs(), model[1].weight.detach().abs())
    w = D.random_direction(model, params="weights")
    assert list(w) == ["0.weight", "4.weight"]
    with pytest.raises(ls.GroupError):
        D.random_direction(nn.Linear(2, 2), params="norm")


def test_frozen_parameters_are_not_in_the_direction():
    model = bn_net()
    model[0].weight.requires_grad_(False)
    assert "0.weight" not in D.random_direction(model)


def test_tied_weights_counted_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Conv2d(2, 4, 3)
            self.dec = nn.ConvTranspose2d(4, 2, 3)  # weight (4, 2, 3, 3): the same shape
            self.dec.weight = self.enc.weight
            self.a = nn.Linear(3, 3)
            self.b = nn.Linear(3, 3)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.dec(torch.relu(self.enc(x)))

    torch.manual_seed(0)
    model = Tied()
    d = D.random_direction(model)
    assert list(d) == [n for n, _ in model.named_parameters()]
    assert "dec.weight" not in d and "b.weight" not in d
    # the first owner (the Conv2d) decides the filters: dim 0
    for fd, fw in zip(d["enc.weight"], model.enc.weight.detach()):
        assert math.isclose(float(fd.norm()), float(fw.norm()), rel_tol=1e-5)
    total = sum(p.numel() for p in model.parameters())  # parameters() also counts a tied tensor once
    assert D.to_flat(d, model).numel() == total


def test_normalize_bad_options_and_shapes():
    lin = nn.Linear(3, 2)
    with pytest.raises(D.DirectionError, match="normalization='filters' is not accepted; accepted: 'filter'"):
        D.random_direction(lin, normalization="filters")
    with pytest.raises(D.DirectionError, match="one_d='keep'"):
        D.normalize({"weight": torch.ones(2, 3)}, lin, one_d="keep")
    with pytest.raises(D.DirectionError, match=r"'weight' has shape \(3, 2\) but the model's \(Linear\) has shape \(2, 3\)"):
        D.normalize({"weight": torch.ones(3, 2)}, lin)
    with pytest.raises(D.DirectionError, match="'wieght' is not a parameter.*weight"):
        D.normalize({"wieght": torch.ones(2, 3)}, lin)


# ------------------------------------------------------------------ checkpoints, planes
def three_models(dtype=torch.float64):
    out = []
    for s in range(3):
        out.append(bn_net(s).to(dtype))
    return out


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_checkpoint_direction_models_and_state_dicts():
    a, b, _ = three_models()
    d = D.checkpoint_direction(a, b)
    assert list(d) == [n for n, _ in a.named_parameters()]
    for name, p in a.named_parameters():
        assert torch.equal(p.detach() + d[name], dict(b.named_parameters())[name].detach())
    # a state dict with DataParallel prefixes and buffers: only parameters are used
    sd = {"module." + k: v for k, v in b.state_dict().items()}
    d2 = D.checkpoint_direction(a, sd)
    assert d2.keys() == d.keys() and all(torch.equal(d[k], d2[k]) for k in d)
    d3 = D.checkpoint_direction(a.state_dict(), b.state_dict(), model=a, params="norm")
    assert list(d3) == ["1.weight", "1.bias"]
    with pytest.raises(D.DirectionError, match="state dicts"):
        D.checkpoint_direction(a.state_dict(), b.state_dict())


def test_checkpoint_direction_of_another_architecture_names_the_parameter():
    a = bn_net()
    other = nn.Sequential(nn.Conv2d(2, 5, 3), nn.BatchNorm2d(5), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 16, 3))
    with pytest.raises(D.DirectionError, match=r"parameter '0.weight' has shape \(4, 2, 3, 3\) in the first "
                                               r"checkpoint and \(5, 2, 3, 3\) in the second"):
        D.checkpoint_direction(a, other)
    smaller = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(D.DirectionError, match="parameter '4.weight' is missing from the second"):
        D.checkpoint_direction(a, smaller)


@pytest.mark.parametrize("ortho", [False, True])
def test_plane_passes_through_all_three_checkpoints(ortho):
    a, b, c = three_models()
    p = D.plane(a, b, c, orthogonalize=ortho, labels=("A", "B", "C"))
    assert p.centre == "A" and p.kind == "plane" and p.explained_variance is None
    assert p.steps == {"A": -1, "B": -1, "C": -1}
    assert p.points["A"] == (0.0, 0.0) and p.points["B"] == (1.0, 0.0)
    for label, m in (("A", a), ("B", b), ("C", c)):
        al, be = p.points[label]
        theta = flat_params(a) + al * D.to_flat(p.d1, a) + be * D.to_flat(p.d2, a)
        assert torch.allclose(theta, flat_params(m), atol=1e-12, rtol=0), label
    if ortho:
        assert abs(p.cos) < 1e-12 and p.points["C"][0] != 0.0
    else:
        assert p.points["C"] == (0.0, 1.0)
        assert math.isclose(p.cos, D.cosine(D.checkpoint_direction(a, b), D.checkpoint_direction(a, c)))
    with pytest.raises(D.DirectionError, match="identical"):
        D.plane(a, a, c)
    with pytest.raises(D.DirectionError, match="on the line"):
        D.plane(a, b, b)


def test_orthogonalize_cosine_norm_dot_against_flat_vectors():
    model = bn_net()
    d1, d2 = D.random_direction(model, seed=0, one_d="filter"), D.random_direction(model, seed=1, one_d="filter")
    f1, f2 = D.to_flat(d1).double(), D.to_flat(d2).double()
    assert math.isclose(D.norm(d1), float(f1.norm()), rel_tol=1e-12)
    assert math.isclose(D.dot(d1, d2), float(f1 @ f2), rel_tol=1e-9)
    assert math.isclose(D.cosine(d1, d2), float(f1 @ f2 / (f1.norm() * f2.norm())), rel_tol=1e-9)
    o1, o2 = D.orthogonalize(d1, d2)
    assert all(torch.equal(o1[k], d1[k]) for k in d1)
    want = f2 - (f1 @ f2) / (f1 @ f1) * f1
    assert torch.allclose(D.to_flat(o2).double(), want, atol=1e-5)
    assert abs(D.cosine(o1, o2)) < 1e-6
    with pytest.raises(D.DirectionError, match="zero"):
        D.cosine(d1, {k: torch.zeros_like(v) for k, v in d1.items()})


def test_to_flat_from_flat_round_trip_and_errors():
    model = bn_net()
    d = D.random_direction(model, params="weights")
    flat = D.to_flat(d, model)  # names outside d (the 1-D ones) are zeros
    assert flat.numel() == sum(p.numel() for p in model.parameters())
    back = D.from_flat(flat, model)
    assert all(torch.equal(back[k], d[k]) for k in d)
    assert float(back["0.bias"].abs().sum()) == 0
    with pytest.raises(D.DirectionError, match="length"):
        D.from_flat(flat[:-1], model)


# ------------------------------------------------------------------ stored directions
def test_directions_dataset_round_trip_in_memory():
    model = bn_net()
    dirs = [D.random_direction(model, seed=0), D.random_direction(model, seed=1, params="weights")]
    ds = D.directions_to_dataset(xr.Dataset({"loss": ((), 1.0)}), dirs)
    assert ds.direction_vector.dims == ("direction", "parameter")
    assert list(ds.direction.values) == ["d1", "d2"]
    back = D.directions_from_dataset(ds, model)
    assert list(back[0]) == list(dirs[0])
    for orig, got in zip(dirs, back):
        for k, v in got.items():
            assert torch.equal(v, orig[k] if k in orig else torch.zeros_like(v)), k
    # a Plane and labelled mappings work too
    p = D.plane(*three_models(torch.float32))
    ds_p = D.directions_to_dataset(xr.Dataset(), p)
    d1, d2 = D.directions_from_dataset(ds_p)
    assert torch.equal(d1["0.weight"], p.d1["0.weight"]) and torch.equal(d2["4.bias"], p.d2["4.bias"])
    with pytest.raises(D.DirectionError, match="direction coordinate"):
        D.directions_to_dataset(xr.Dataset(coords={"direction": ["x", "y"]}), dirs)


def test_directions_dataset_netcdf_round_trip(tmp_path):
    from landscape.results import read_result, write_result

    model = bn_net()
    dirs = [D.random_direction(model, seed=0, one_d="filter"), D.random_direction(model, seed=1)]
    ds = D.directions_to_dataset(xr.Dataset({"loss": ((), 0.5, {"long_name": "loss", "units": "nats"})}), dirs)
    path = write_result(ds, tmp_path / "slice-0123456789.nc", analysis="slice", run="r", step=1,
                        checkpoint="a.pt", checkpoint_sha256="0" * 64, options_hash="0123456789", config_json="{}")
    back = D.directions_from_dataset(read_result(path), model)
    for orig, got in zip(dirs, back):
        assert all(torch.equal(orig[k], got[k]) for k in orig)
    # evaluating the stored plane on another architecture is refused with the parameter named
    other = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))
    with pytest.raises(D.DirectionError, match=r"stored direction 'd1': parameter '4.weight' has shape \(3, 64\) "
                                               r"but the model's \(Sequential\) has shape \(5, 64\)"):
        D.directions_from_dataset(read_result(path), other)
    with pytest.raises(D.DirectionError, match="no stored directions"):
        D.directions_from_dataset(xr.Dataset())


def test_model_left_exactly_as_it_was():
    model = bn_net()
    model.train()
    model[4].weight.requires_grad_(False)
    snap = snapshot(model)
    a, b, c = three_models(torch.float32)
    for norm_ in D.NORMALIZATIONS:
        for one_d in D.ONE_D:
            D.random_direction(model, normalization=norm_, one_d=one_d)
    D.checkpoint_direction(model, b)
    D.plane(model, b, c, orthogonalize=True)
    ds = D.directions_to_dataset(xr.Dataset(), D.random_direction(model))
    D.directions_from_dataset(ds, model)
    assert_unchanged(model, snap)


def test_public_api_names():
    for name in ("random_direction", "checkpoint_direction", "plane", "Plane", "DirectionError",
                 "directions_to_dataset", "directions_from_dataset", "momentum_direction", "gradient_direction",
                 "eigenvector_directions", "trajectory_pca", "orthogonalize"):
        assert getattr(ls, name) is getattr(D, name)


# ------------------------------------------------------------- momentum, gradient, Hessian
def tiny_data(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def trained(steps=3):
    model = bn_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = tiny_data()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), opt


def test_momentum_direction_from_a_checkpoint(tmp_path):
    model, opt = trained()
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict(), "epoch": 1},
               tmp_path / "a.pt")  # a plain PyTorch checkpoint
    ckpt = ls.load_checkpoint(tmp_path / "a.pt", model=bn_net(1))
    mom = ckpt.momentum()
    raw = D.momentum_direction(mom, ckpt.model, normalization="none", one_d="filter")
    for name, p in model.named_parameters():
        assert torch.equal(raw[name], opt.state[p]["momentum_buffer"]), name
    d = D.momentum_direction(mom, ckpt.model)  # filter-normalized against the checkpoint's weights
    for fd, fw in zip(d["0.weight"], ckpt.model[0].weight.detach()):
        assert math.isclose(float(fd.norm()), float(fw.norm()), rel_tol=1e-5)
    assert torch.equal(d["1.bias"], torch.zeros(4))
    part = D.momentum_direction({"4.weight": mom["4.weight"]}, model, normalization="none", one_d="filter")
    assert torch.equal(part["0.weight"], torch.zeros(4, 2, 3, 3))  # no buffer: zero
    assert list(D.momentum_direction(mom, model, params="norm", one_d="filter")) == ["1.weight", "1.bias"]
    with pytest.raises(D.DirectionError, match="cover none"):
        D.momentum_direction({"x": torch.ones(1)}, model)
    with pytest.raises(D.DirectionError, match=r"momentum: parameter '4.bias' has shape \(4,\)"):
        D.momentum_direction({"4.bias": torch.ones(4)}, model)


def test_gradient_direction_is_the_data_set_gradient(f64):
    model = bn_net().double().eval()
    x, y = tiny_data()
    x = x.double()
    snap = snapshot(model)
    g = D.gradient_direction(model, (x, y), normalization="none", one_d="filter", batch_size=10)
    assert_unchanged(model, snap)
    ref = bn_net().double().eval()
    ref.load_state_dict(model.state_dict())
    nn.functional.cross_entropy(ref(x), y).backward()
    for name, p in ref.named_parameters():
        assert torch.allclose(g[name], p.grad, atol=1e-12, rtol=1e-10), name
    gn = D.gradient_direction(model, (x, y), params="norm", one_d="filter", normalization="layer")
    assert list(gn) == ["1.weight", "1.bias"]
    assert torch.equal(gn["1.bias"].abs(), model[1].bias.detach().abs())
    assert torch.equal(torch.sign(gn["1.weight"]), torch.sign(dict(ref.named_parameters())["1.weight"].grad))


def test_eigenvector_directions_from_a_real_hessian_result(tmp_path, f64):
    from landscape.objective import Objective
    from landscape.results import read_result, write_result

    model, _ = trained()
    model = model.double()
    x, y = tiny_data()
    data = (x.double(), y)
    res = ls.hessian_spectrum(model, data, top_k=2, eigenvectors=True, trace=False, density=False,
                              params="no-norm", tol=1e-8, progress=False)
    vs = D.eigenvector_directions(model, res, k=2)
    assert [list(v) for v in vs] == [["0.weight", "0.bias", "4.weight", "4.bias"]] * 2
    for i, v in enumerate(vs):  # the mapping to names follows parameter_name exactly
        for name, t in v.items():
            stored = res.eigenvectors.isel(k=i).where(res.parameter_name == name, drop=True).values
            assert torch.equal(t.reshape(-1), torch.from_numpy(stored)), name
    obj = Objective(model, data, params="no-norm")
    for lam, v in zip(res.eigenvalues.values, vs):
        flat = D.to_flat(v, list(obj.names))
        assert math.isclose(D.norm(v), 1.0, rel_tol=1e-9)
        assert torch.allclose(obj.hvp(flat), float(lam) * flat, atol=1e-5)
    # through a netCDF result file (length-1 run/step dimensions) and with the group checked
    path = write_result(res, tmp_path / "hessian-0123456789.nc", analysis="hessian", run="r", step=3,
                        checkpoint="a.pt", checkpoint_sha256="0" * 64, options_hash="0123456789")
    back = D.eigenvector_directions(model, read_result(path), k=1, params="no-norm")
    assert all(torch.equal(back[0][k], vs[0][k]) for k in vs[0])
    with pytest.raises(D.DirectionError, match="not group 'all'"):
        D.eigenvector_directions(model, res, params="all")
    with pytest.raises(D.DirectionError, match="k=3 but only 2"):
        D.eigenvector_directions(model, res, k=3)
    with pytest.raises(D.DirectionError, match="eigenvectors=True"):
        D.eigenvector_directions(model, res.drop_vars("eigenvectors"))
    with pytest.raises(D.DirectionError, match="entries but the group has"):
        D.eigenvector_directions(model, torch.zeros(2, 5))
    flat = D.eigenvector_directions(model, torch.from_numpy(res.eigenvectors.values), params="no-norm")
    assert all(torch.equal(flat[1][k], vs[1][k]) for k in vs[1])


# --------------------------------------------------------------------------- trajectory
def trajectory_states(n=6, in_plane=False, seed=0):
    base = bn_net(seed).double()
    names = [nm for nm, _ in base.named_parameters()]
    c = D.to_flat(dict(base.named_parameters()), names)
    g = torch.Generator().manual_seed(seed)
    P = c.numel()
    if in_plane:
        e = torch.randn(2, P, generator=g, dtype=torch.float64)  # not orthogonal, not unit
        ab = torch.randn(n, 2, generator=g, dtype=torch.float64)
        ab[-1] = 0  # the final checkpoint is the centre
        flats = [c + ab[i] @ e for i in range(n)]
    else:
        flats = [c + 0.1 * torch.randn(P, generator=g, dtype=torch.float64) * (n - i) for i in range(n - 1)] + [c]
    shapes = {nm: p.shape for nm, p in base.named_parameters()}
    return base, [D.from_flat(f, shapes) for f in flats], torch.stack(flats)


def test_trajectory_in_a_plane_is_reproduced_exactly():
    base, states, flats = trajectory_states(in_plane=True)
    p = D.trajectory_pca(states, model=base)
    assert p.kind == "trajectory" and p.centre == "5" and p.points["5"] == (0.0, 0.0)
    assert math.isclose(D.norm(p.d1), 1, rel_tol=1e-12) and math.isclose(D.norm(p.d2), 1, rel_tol=1e-12)
    assert abs(p.cos) < 1e-12
    assert math.isclose(sum(p.explained_variance), 1.0, rel_tol=1e-12)
    d1, d2 = D.to_flat(p.d1, base), D.to_flat(p.d2, base)
    for i in range(len(states)):
        al, be = p.points[str(i)]
        assert torch.allclose(flats[-1] + al * d1 + be * d2, flats[i], atol=1e-10, rtol=0), i
    # the first checkpoint is at coordinates <= 0 (signs fixed)
    assert p.points["0"][0] <= 0 and p.points["0"][1] <= 0


@pytest.mark.parametrize("demean", [False, True])
@pytest.mark.parametrize("gram", [False, True])
def test_trajectory_pca_coordinates_are_the_projections(monkeypatch, demean, gram):
    import numpy as np

    if gram:
        monkeypatch.setattr(D, "_SVD_MAX_ENTRIES", 0)
    base, states, flats = trajectory_states(n=7)
    p = D.trajectory_pca(states, model=base, demean=demean, steps=[0, 10, 20, 30, 40, 50, 60])
    assert list(p.points) == ["0", "10", "20", "30", "40", "50", "60"] and p.steps["30"] == 30
    m = (flats[:-1] - flats[-1]).numpy()
    a = m - m.mean(0) if demean else m
    _, s, vt = np.linalg.svd(a, full_matrices=False)
    d = np.stack([D.to_flat(p.d1, base).numpy(), D.to_flat(p.d2, base).numpy()])
    for k in range(2):  # the top right singular vectors, up to sign
        assert abs(abs(float(d[k] @ vt[k])) - 1) < 1e-9
    np.testing.assert_allclose(p.explained_variance, (s[:2] ** 2) / (s**2).sum(), rtol=1e-9)
    for i in range(6):  # coordinates = projections of theta_i - theta_centre
        np.testing.assert_allclose(p.points[str(10 * i)], d @ m[i], rtol=1e-9, atol=1e-12)


def test_trajectory_pca_centre_labels_checkpoints_and_errors():
    from types import SimpleNamespace

    base, states, flats = trajectory_states(n=5)
    models = []
    for i, s in enumerate(states):
        m = bn_net().double()
        m.load_state_dict(s, strict=False)
        models.append(SimpleNamespace(model=m, step=100 * i))
    p = D.trajectory_pca(models, centre=0, params="weights")
    assert p.centre == "0" and list(p.d1) == ["0.weight", "4.weight"]
    assert p.steps == {"0": 0, "100": 100, "200": 200, "300": 300, "400": 400}
    assert D.plane(*models[:3]).steps == {"a": 0, "b": 100, "c": 200}  # Checkpoints' steps
    q = D.trajectory_pca(models, labels=list("abcde"))
    assert list(q.points) == list("abcde") and q.centre == "e"
    with pytest.raises(D.DirectionError, match="at least 3"):
        D.trajectory_pca(states[:2], model=base)
    with pytest.raises(D.DirectionError, match="state dicts"):
        D.trajectory_pca(states)
    other = nn.Sequential(nn.Conv2d(2, 5, 3), nn.BatchNorm2d(5), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 16, 3))
    with pytest.raises(D.DirectionError, match=r"parameter '0.weight' has shape \(5, 2, 3, 3\) in checkpoint 2"):
        D.trajectory_pca([models[0], models[1], other, models[3]], centre=0)
    line = [D.from_flat(flats[-1] + t * (flats[0] - flats[-1]), dict(states[0])) for t in (1.0, 0.5, 0.25, 0.0)]
    with pytest.raises(D.DirectionError, match="fewer than two directions"):
        D.trajectory_pca(line, model=base)


def test_new_sources_leave_the_model_as_it_was():
    model, opt = trained()
    model.train()
    snap = snapshot(model)
    mom = {n: opt.state[p]["momentum_buffer"] for n, p in model.named_parameters()}
    D.momentum_direction(mom, model)
    D.gradient_direction(model, tiny_data(), bn_mode="train")
    D.eigenvector_directions(model, torch.eye(D.to_flat(D.random_direction(model), model).numel())[:2])
    D.trajectory_pca([model, bn_net(1), bn_net(2), bn_net(3)], centre=0)
    assert_unchanged(model, snap)


def test_readme_example_runs():
    from pathlib import Path

    text = (Path(__file__).parent.parent / "README.md").read_text()
    section = text.split("### Loss-landscape directions (`landscape.directions`)", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    env: dict = {}
    exec(compile(code, "README.md", "exec"), env)  # noqa: S102
    traj, again = env["traj"], env["again"]
    assert traj.kind == "trajectory" and len(again) == 2
    assert all(torch.equal(again[0][k], traj.d1[k]) for k in traj.d1)
    assert abs(D.cosine(env["d1"], env["d2"])) < 1e-6
