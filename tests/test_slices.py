"""Loss-landscape slices (Li et al. 2018) against plain loops that set the weights and evaluate."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from reference import tiny_bn_cnn
from torch import nn

from landscape.analyses.slices import (
    LossSliceOptions,
    SliceError,
    combine_parts,
    grid_axes,
    loss_slice,
)
from landscape.config import ConfigError
from landscape.directions import Plane, directions_from_dataset
from landscape.objective import Objective


def _setup(n=20, seed=0):
    model = tiny_bn_cnn().double()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return model, x, y


def _dirs(model, k, seed=0, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    return [{n: scale * torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in model.named_parameters()}
            for _ in range(k)]


def _point_model(model, dirs, coeffs):
    m = copy.deepcopy(model)
    state = m.state_dict()
    for n, p in model.named_parameters():
        state[n] = p.detach() + sum(c * d[n] for c, d in zip(coeffs, dirs) if n in d)
    m.load_state_dict(state)
    return m


def _reference(model, x, y, dirs, coeffs, bn_mode, batch_size, recompute_batches=None):
    """Loss and accuracy at one point, written without Objective: deepcopy, load weights, evaluate."""
    m = _point_model(model, dirs, coeffs)
    chunks = [(x[s:s + batch_size], y[s:s + batch_size]) for s in range(0, len(y), batch_size)]
    with torch.no_grad():
        if bn_mode == "recompute":  # hand-written recalibration: reset, cumulative average, train mode
            bns = [mm for mm in m.modules() if isinstance(mm, nn.BatchNorm2d)]
            for bn in bns:
                bn.reset_running_stats()
                bn.momentum = None
            m.train()
            for xb, _ in chunks[:recompute_batches or len(chunks)]:
                m(xb)
        m.train(bn_mode == "batch")
        loss = acc = 0.0
        for xb, yb in chunks:
            z = m(xb)
            loss += float(F.cross_entropy(z, yb)) * len(yb) / len(y)
            acc += float((z.argmax(-1) == yb).double().sum()) / len(y)
    return loss, acc


def _check_against_loop(ds, model, x, y, dirs, bn_mode, batch_size, recompute_batches=None):
    axes = [ds.alpha.values] + ([ds.beta.values] if "beta" in ds.dims else [])
    for idx in np.ndindex(*[a.size for a in axes]):
        coeffs = [float(a[i]) for a, i in zip(axes, idx)]
        loss, acc = _reference(model, x, y, dirs, coeffs, bn_mode, batch_size, recompute_batches)
        assert float(ds.loss.values[idx]) == pytest.approx(loss, rel=1e-11, abs=1e-12), (idx, coeffs)
        assert float(ds.accuracy.values[idx]) == pytest.approx(acc, abs=1e-12), (idx, coeffs)


@pytest.mark.parametrize("bn_mode", ["eval", "recompute", "batch"])
@pytest.mark.parametrize("ndim", [1, 2])
def test_slice_equals_plain_loop(bn_mode, ndim):
    model, x, y = _setup()
    dirs = _dirs(model, ndim)
    grid = "-1:1:5" if ndim == 1 else ["-1:1:3", "-0.6:1:3"]  # non-square, 0 inserted into beta
    rb = 2 if bn_mode == "recompute" else None
    ds = loss_slice(model, (x, y), dirs if ndim == 2 else dirs[0], grid=grid, bn_mode=bn_mode, batch_size=8,
                    recompute_batches=rb, progress=False)
    assert ds.attrs["bn_mode"] == bn_mode and ds.attrs["ndim"] == ndim and ds.attrs["analysis"] == "slice"
    assert ds.loss.dims == ("alpha", "beta")[:ndim]
    if ndim == 2:
        assert ds.loss.shape == (3, 4) and ds.beta.values.tolist() == pytest.approx([-0.6, 0.0, 0.2, 1.0])
    _check_against_loop(ds, model, x, y, dirs, bn_mode, 8, rb)
    if bn_mode == "recompute":
        assert ds.attrs["recompute_batches"] == 2
        assert float(ds.centre_loss_running_stats) == pytest.approx(_reference(model, x, y, dirs, [0.0] * ndim,
                                                                               "eval", 8)[0], rel=1e-12)


def test_non_square_orientation_and_alignment():
    model, x, y = _setup()
    d1, d2 = _dirs(model, 2, seed=3)
    d2 = {"4.weight": d2["4.weight"]}  # very different directions: a transposed grid would show
    ds = loss_slice(model, (x, y), [d1, d2], grid=[[-1.0, 0.0, 0.5], "-2:2:5"], batch_size=None, progress=False)
    assert ds.loss.dims == ("alpha", "beta") and ds.loss.shape == (3, 5)
    assert ds.alpha.values.tolist() == [-1.0, 0.0, 0.5] and ds.beta.values.tolist() == [-2, -1, 0, 1, 2]
    for a in ds.alpha.values:
        for b in ds.beta.values:
            ref, _ = _reference(model, x, y, [d1, d2], [a, b], "eval", len(y))
            assert float(ds.loss.sel(alpha=a, beta=b)) == pytest.approx(ref, rel=1e-11)


def test_centre_is_the_models_own_loss():
    model, x, y = _setup()
    ds = loss_slice(model, (x, y), _dirs(model, 2), grid=5, batch_size=7, progress=False)
    own, err = Objective(model, (x, y), batch_size=7).loss_and_error()
    with torch.no_grad():
        direct = float(F.cross_entropy(model.eval()(x), y))
    assert float(ds.centre_loss) == float(own) == pytest.approx(direct, rel=1e-13)
    assert float(ds.loss.sel(alpha=0.0, beta=0.0)) == float(ds.centre_loss)
    assert float(ds.centre_accuracy) == pytest.approx(1 - float(err), abs=1e-15)
    d = _dirs(model, 2)
    f = [torch.cat([t.reshape(-1) for t in di.values()]) for di in d]
    assert ds.direction.values.tolist() == ["d1", "d2"]
    np.testing.assert_allclose(ds.direction_norm.values, [float(v.norm()) for v in f], rtol=1e-13)
    assert float(ds.cos_d1_d2) == pytest.approx(float(f[0] @ f[1] / (f[0].norm() * f[1].norm())), rel=1e-12)


def test_grids_contain_zero_exactly():
    assert 0.0 in grid_axes("-1:1:51", 1)[0]
    a = grid_axes("-1:1:20", 1)[0]
    assert a.size == 21 and 0.0 in a and np.all(np.diff(a) > 0)
    a = grid_axes([0.3, -0.7, 1e-13], 1)[0]  # floating noise near 0 is snapped, and sorted
    assert a.tolist() == [-0.7, 0.0, 0.3]
    assert grid_axes("0.5:2:4", 1)[0].tolist() == [0.0, 0.5, 1.0, 1.5, 2.0]  # 0 inserted outside the range
    a, b = grid_axes(np.linspace(-1, 1, 7), 2)
    assert a.tolist() == b.tolist() and a[3] == 0.0


def test_model_left_exactly_as_it_was():
    model, x, y = _setup()
    model[0].bias.requires_grad_(False)  # frozen: not in the group
    model.train()
    model[4].eval()
    model[1].momentum = 0.3
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    grads = [p.requires_grad for p in model.parameters()]
    dirs = _dirs(model, 2)
    for d in dirs:
        d.pop("0.bias")
    for mode in ("eval", "recompute", "batch"):
        loss_slice(model, (x, y), dirs, grid=3, bn_mode=mode, batch_size=8, progress=False)
        loss_slice(model, (x, y), dirs, grid=3, bn_mode=mode, batch_size=8, vmap=True, progress=False)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
    assert int(model[1].num_batches_tracked) == int(before["1.num_batches_tracked"])
    assert [m.training for m in model.modules()] == flags
    assert [p.requires_grad for p in model.parameters()] == grads
    assert model[1].momentum == 0.3
    with pytest.raises(SliceError, match="'0.bias' that is not a parameter"):
        loss_slice(model, (x, y), _dirs(model, 1)[0], grid=3, progress=False)


def test_parts_combine_to_the_unsplit_slice():
    model, x, y = _setup()
    dirs = _dirs(model, 2)
    whole = loss_slice(model, (x, y), dirs, grid=["-1:1:5", "-1:1:4"], batch_size=8, progress=False)
    parts = [loss_slice(model, (x, y), dirs, grid=["-1:1:5", "-1:1:4"], batch_size=8, part=i, parts=3,
                        progress=False) for i in range(3)]
    assert [p.alpha.size for p in parts] == [2, 2, 1] and [p.attrs["part"] for p in parts] == [0, 1, 2]
    joined = combine_parts(parts[::-1])
    for name in ("loss", "accuracy", "centre_loss", "centre_accuracy", "direction_norm", "cos_d1_d2"):
        np.testing.assert_array_equal(joined[name].values, whole[name].values, err_msg=name)
    assert joined.loss.dims == ("alpha", "beta") and joined.alpha.values.tolist() == whole.alpha.values.tolist()
    assert joined.attrs["part"] == -1
    with pytest.raises(SliceError, match="each of 0..2 once"):
        combine_parts(parts[:2])
    other = loss_slice(model, (x, y), dirs, grid=["-1:1:5", "-1:1:4"], batch_size=4, part=2, parts=3,
                       progress=False)
    with pytest.raises(SliceError, match="different slices"):
        combine_parts([parts[0], parts[1], other])
    opts = LossSliceOptions(parts=3)
    assert [o.part for o in opts.split_tasks()] == [0, 1, 2] and LossSliceOptions().split_tasks() == [LossSliceOptions()]


@pytest.mark.parametrize("bn_mode", ["eval", "recompute", "batch"])
def test_vmap_equals_loop(bn_mode):
    model, x, y = _setup()
    dirs = _dirs(model, 2)
    kw = dict(grid=["-1:1:3", "-1:1:5"], bn_mode=bn_mode, batch_size=8, progress=False)
    loop = loss_slice(model, (x, y), dirs, **kw)
    vm = loss_slice(model, (x, y), dirs, vmap=True, vmap_chunk=4, **kw)
    np.testing.assert_allclose(vm.loss.values, loop.loss.values, rtol=1e-12)
    np.testing.assert_array_equal(vm.accuracy.values, loop.accuracy.values)
    assert vm.attrs["vmap"] == 1 and float(vm.centre_loss) == float(vm.loss.sel(alpha=0.0, beta=0.0))


def test_regression_targets_have_no_accuracy_and_own_data_works():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    x, t = torch.randn(30, 3), torch.randn(30, 2)
    data = torch.utils.data.TensorDataset(x, t)
    d = {"2.weight": torch.randn(2, 5)}
    ds = loss_slice(model, data, d, grid="-1:1:5", loss="mse", batch_size=16, progress=False)
    assert "accuracy" not in ds and "centre_accuracy" not in ds and ds.attrs["metrics"] == "loss"
    for a in ds.alpha.values:
        with torch.no_grad():
            ref = float(F.mse_loss(_point_model(model, [d], [a])(x), t))
        assert float(ds.loss.sel(alpha=a)) == pytest.approx(ref, rel=1e-5)
    # a label-smoothed loss module on class targets, metrics restricted to accuracy
    y = torch.randint(0, 2, (30,))
    ds = loss_slice(model, torch.utils.data.TensorDataset(x, y), d, grid=3, metrics=["accuracy"],
                    loss=nn.CrossEntropyLoss(label_smoothing=0.1), progress=False)
    assert "loss" not in ds and "accuracy" in ds and ds.attrs["loss_units"] == "nats"


def test_plane_points_and_explained_variance():
    model, x, y = _setup()
    d1, d2 = _dirs(model, 2)
    plane = Plane(d1, d2, {"epoch_1": (0.5, -0.25), "end": (0.0, 0.0)}, (0.7, 0.2), steps={"epoch_1": 10},
                  kind="trajectory", centre="end")
    ds = loss_slice(model, (x, y), plane, grid=3, progress=False)
    assert ds.attrs["direction_kind"] == "trajectory"
    assert ds.point_label.values.tolist() == ["epoch_1", "end"] and ds.point_step.values.tolist() == [10, -1]
    assert ds.point_alpha.values.tolist() == [0.5, 0.0] and ds.point_beta.values.tolist() == [-0.25, 0.0]
    assert ds.explained_variance.dims == ("direction",)
    ds = loss_slice(model, (x, y), d1, grid=3, points={"b": 1.0}, direction_kind="interpolation", progress=False)
    assert ds.attrs["direction_kind"] == "interpolation" and "point_beta" not in ds


def test_autocast_bf16_records_its_error():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    d = {"0.weight": torch.randn(16, 8)}
    ds = loss_slice(model, (x, y), d, grid=3, autocast="bf16", progress=False)
    exact = loss_slice(model, (x, y), d, grid=3, progress=False)
    err = float(ds.autocast_centre_error)
    assert ds.attrs["autocast"] == "bf16" and np.isfinite(err) and err < 0.05
    assert err == pytest.approx(abs(float(ds.centre_loss) - float(exact.centre_loss)), rel=1e-12, abs=1e-15)
    with pytest.raises(ConfigError, match="autocast"):
        loss_slice(model, (x, y), d, autocast="bf16", dtype="float64", progress=False)


def test_bad_input_errors():
    model, x, y = _setup()
    d = _dirs(model, 1)[0]
    with pytest.raises(ConfigError, match="no points"):
        loss_slice(model, (x, y), d, grid=[], progress=False)
    with pytest.raises(ConfigError, match="no points"):
        loss_slice(model, (x, y), d, grid="-1:1:0", progress=False)
    with pytest.raises(ConfigError, match="'lo:hi:num'"):
        loss_slice(model, (x, y), d, grid="-1..1", progress=False)
    bad = dict(d, **{"0.weight": torch.zeros(3, 1, 2, 2, dtype=torch.float64)})
    with pytest.raises(SliceError, match=r"'0.weight' has shape \(3, 1, 2, 2\) in the direction but \(3, 1, 3, 3\)"):
        loss_slice(model, (x, y), bad, progress=False)
    with pytest.raises(SliceError, match="not a parameter of group"):
        loss_slice(model, (x, y), {"1.running_mean": torch.zeros(3)}, progress=False)
    with pytest.raises(ConfigError, match="accepted: 'eval', 'recompute', 'batch'"):
        loss_slice(model, (x, y), d, bn_mode="evl", progress=False)
    with pytest.raises(ConfigError, match="'loss', 'accuracy'"):
        loss_slice(model, (x, y), d, metrics=["loss", "acc"], progress=False)
    with pytest.raises(SliceError, match="accepted: one dict"):
        loss_slice(model, (x, y), [d, d, d], progress=False)
    with pytest.raises(SliceError, match="per-axis specs for a 1-D slice"):
        loss_slice(model, (x, y), d, grid=["-1:1:3", "-1:1:3"], progress=False)
    with pytest.raises(SliceError, match="part 3 of parts=4 is empty"):
        loss_slice(model, (x, y), d, grid=3, part=3, parts=4, progress=False)
    with pytest.raises(SliceError, match="recompute_batches=5 but the data make only 3 batches"):
        loss_slice(model, (x, y), d, grid=3, bn_mode="recompute", batch_size=8, recompute_batches=5, progress=False)
    with pytest.raises(ConfigError, match="part must be None"):
        LossSliceOptions(part=2, parts=2)
    assert LossSliceOptions(bn_mode="train").bn_mode == "batch"


def test_directions_kept_and_reused_on_another_model():
    model, x, y = _setup()
    dirs = _dirs(model, 2)
    ds = loss_slice(model, (x, y), dirs, grid=3, progress=False)
    assert ds.direction_vector.dims == ("direction", "parameter")
    assert ds.direction_vector.shape == (2, sum(p.numel() for p in model.parameters()))
    back = directions_from_dataset(ds, model)  # (its netCDF round trip: tests/test_directions.py)
    other = tiny_bn_cnn().double()
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.5)
    again = loss_slice(other, (x, y), back, grid=3, progress=False)
    _check_against_loop(again, other, x, y, dirs, "eval", 256)
    assert "direction_vector" not in loss_slice(model, (x, y), dirs, grid=3, keep_directions=False, progress=False)


DATA = {"dataset": "synthetic", "dataset_kwargs": {"num_samples": 24, "input_shape": [4], "num_classes": 3, "seed": 1}}


def _checkpoints(root, momentum=True):
    from landscape.checkpoint import save_checkpoint
    from landscape.models import build_model

    for i in range(2):
        torch.manual_seed(i)
        m = build_model("mlp", input_shape=(4,), num_classes=3, width=6, depth=2, norm="batch")
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
        F.cross_entropy(m(x), y).backward()
        opt.step()
        save_checkpoint(root / "run" / f"epoch_{i}.pt", m, optimizer=opt if momentum else None, step=10 * i,
                        epoch=i, config=DATA)
    return root


def test_registered_slice_runs_through_analyze(tmp_path):
    import landscape
    from landscape.analyses.slices import slice_analysis
    from landscape.checkpoint import load_checkpoint
    from landscape.results import find_results, open_results, read_result

    ckpts = _checkpoints(tmp_path / "ck")
    opts = {"slice": {"kind": "momentum", "ndim": 2, "grid": ["-1:1:3", "-1:1:5"], "batch_size": 8}}
    s = landscape.analyze(ckpts, "slice", options=opts, out=tmp_path / "res", progress=False)
    assert s.counts() == {"done": 2, "skipped": 0, "failed": 0}, s.failed
    ds = open_results(tmp_path / "res", "slice")
    assert ds.loss.dims[-2:] == ("alpha", "beta") and ds.sizes["step"] == 2
    assert ds.attrs["direction_kind"] == "momentum" and ds.attrs["bn_mode"] == "eval"
    # the file's slice is the function's on the same checkpoint and data
    ck = load_checkpoint(ckpts / "run" / "epoch_1.pt")
    data = landscape.get_dataset("synthetic", "train", augment=False, **DATA["dataset_kwargs"])
    direct = slice_analysis(ck.model, data, ck.momentum, kind="momentum", ndim=2, grid=["-1:1:3", "-1:1:5"],
                            batch_size=8, progress=False)
    np.testing.assert_allclose(ds.loss.sel(run="run", step=10).values, direct.loss.values, rtol=1e-6)
    # parts: one task and one file per part, resumable, combined to the whole slice
    opts["slice"]["parts"] = 2
    s = landscape.analyze(ckpts, "slice", options=opts, out=tmp_path / "res", progress=False)
    assert s.counts()["done"] == 4
    again = landscape.analyze(ckpts, "slice", options=opts, out=tmp_path / "res", progress=False)
    assert again.counts() == {"done": 0, "skipped": 4, "failed": 0}
    groups = find_results(tmp_path / "res", "slice")
    assert len(groups) == 3  # the unsplit slice and its two parts
    files = [f for fs in groups.values() for f in fs if "epoch_1" in str(f)]
    parts = [read_result(f) for f in files if read_result(f).attrs["part"] >= 0]
    joined = combine_parts(parts)
    np.testing.assert_allclose(joined.loss.squeeze(("run", "step")).values, direct.loss.values, rtol=1e-6)


def _flat(d, model):
    return torch.cat([d[n].reshape(-1) if n in d else torch.zeros(p.numel(), dtype=p.dtype)
                      for n, p in model.named_parameters()])


def test_slice_analysis_direction_kinds():
    from landscape.analyses.slices import slice_analysis
    from landscape.directions import normalize

    model, x, y = _setup()
    raw = {"normalization": "none", "one_d": "filter", "grid": 3, "batch_size": 8, "progress": False}
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def loss_of(t):
        ps = dict(zip(names, [v.view(s) for v, s in zip(t.split([s.numel() for s in shapes]), shapes)]))
        return F.cross_entropy(torch.func.functional_call(model.eval(), ps, (x,)), y)

    # gradient: the data-set gradient itself (normalization none)
    ds = slice_analysis(model, (x, y), kind="gradient", **raw)
    g = torch.autograd.grad(loss_of(theta.clone().requires_grad_()), [])[0] if False else         torch.func.grad(loss_of)(theta)
    got = torch.from_numpy(ds.direction_vector.values[0])
    torch.testing.assert_close(got, g, rtol=1e-10, atol=1e-12)
    # eigenvector: the top eigenvector of the dense float64 Hessian (up to sign)
    H = torch.autograd.functional.hessian(loss_of, theta)
    lam, vec = torch.linalg.eigh(H)
    ds = slice_analysis(model, (x, y), kind="eigenvector", eigen_tol=1e-8, **raw)
    v = torch.from_numpy(ds.direction_vector.values[0])
    assert abs(float(v @ vec[:, -1])) == pytest.approx(1.0, abs=1e-6)
    # momentum: the normalized buffers; 2-D adds a seeded random d2, the same for the same seed
    mom = {n: torch.randn(p.shape, dtype=p.dtype) for n, p in model.named_parameters()}
    ds = slice_analysis(model, (x, y), mom, kind="momentum", ndim=2, grid=3, batch_size=8, progress=False)
    want = _flat(normalize(mom, model), model)
    torch.testing.assert_close(torch.from_numpy(ds.direction_vector.values[0]), want)
    assert ds.attrs["normalization"] == "filter" and ds.attrs["one_d"] == "ignore"
    with pytest.raises(SliceError, match="momentum buffers"):
        slice_analysis(model, (x, y), None, kind="momentum", grid=3, progress=False)
    # random: seeded, two different directions, orthogonalized on request
    a = slice_analysis(model, (x, y), kind="random", ndim=2, grid=3, seed=4, progress=False)
    b = slice_analysis(model, (x, y), kind="random", ndim=2, grid=3, seed=4, orthogonalize=True, progress=False)
    np.testing.assert_array_equal(a.direction_vector.values[0], b.direction_vector.values[0])
    assert abs(float(a.cos_d1_d2)) > 1e-3 and abs(float(b.cos_d1_d2)) < 1e-12
    c = slice_analysis(model, (x, y), kind="random", ndim=2, grid=3, seed=5, progress=False)
    assert not np.array_equal(a.direction_vector.values, c.direction_vector.values)
    assert json.loads(a.attrs["config_json"])["kind"] == "random"


def test_momentum_kind_without_optimizer_state_fails_only_that_kind(tmp_path):
    import landscape

    ckpts = _checkpoints(tmp_path / "ck", momentum=False)
    s = landscape.analyze(ckpts, "slice", options={"slice": {"kind": "momentum", "grid": 3}}, out=tmp_path / "r",
                          progress=False)
    assert s.counts()["failed"] == 2 and "no optimizer state" in s.failed[0]["error"]
    s = landscape.analyze(ckpts, "slice", options={"slice": {"kind": "random", "grid": 3}}, out=tmp_path / "r",
                          progress=False)
    assert s.counts()["done"] == 2


def test_float32_model_evaluated_in_float64_copies():
    model, x, y = _setup()
    dirs = _dirs(model, 1)
    f32 = copy.deepcopy(model).float()
    ds = loss_slice(f32, (x.float(), y), {n: d.float() for n, d in dirs[0].items()}, grid=3, bn_mode="recompute",
                    batch_size=8, dtype="float64", progress=False)
    ref = loss_slice(copy.deepcopy(f32).double(), (x.float().double(), y), {n: d.float().double() for n, d in dirs[0].items()}, grid=3,
                     bn_mode="recompute", batch_size=8, progress=False)
    np.testing.assert_allclose(ds.loss.values, ref.loss.values, rtol=1e-12)
    assert ds.attrs["num_parameters"] == sum(p.numel() for p in model.parameters())


def test_channels_last_staging_same_slice_and_recorded():
    """memory_format only changes how image inputs are laid out, never the values; "auto"
    picks channels_last for a Conv2d model and records it; non-image inputs stay contiguous."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                      nn.Flatten(), nn.Linear(4, 3)).double().eval()
    x, y = torch.randn(12, 3, 6, 6, dtype=torch.float64), torch.randint(0, 3, (12,))
    d = {n: torch.randn_like(p) for n, p in m.named_parameters()}
    kw = dict(grid="-1:1:5", batch_size=5, progress=False)
    auto = loss_slice(m, (x, y), d, **kw)
    plain = loss_slice(m, (x, y), d, memory_format="contiguous", **kw)
    assert auto.attrs["memory_format"] == "channels_last"
    assert plain.attrs["memory_format"] == "contiguous"
    np.testing.assert_allclose(auto.loss.values, plain.loss.values, rtol=1e-12, atol=0)
    mlp = nn.Sequential(nn.Linear(3, 2))
    flat = loss_slice(mlp, (torch.randn(8, 3), torch.randint(0, 2, (8,))),
                      {"0.weight": torch.ones(2, 3)}, memory_format="channels_last", **kw)
    assert flat.attrs["memory_format"] == "contiguous"  # nothing 4-D to restage
    with pytest.raises(ConfigError, match="memory_format"):
        loss_slice(m, (x, y), d, memory_format="nhwc", **kw)
