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
                 "directions_to_dataset", "directions_from_dataset"):
        assert getattr(ls, name) is getattr(D, name)
