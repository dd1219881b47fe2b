"""``landscape slice`` on tiny checkpoints: each kind of slice written as a result, checked against
the checkpoints' own losses (interpolation at alpha=1 is B, the plane passes through A, B, C),
the figures drawn from the written result, and bad input as exit status 2."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from landscape import directions as D
from landscape.checkpoint import load_checkpoint, save_checkpoint
from landscape.cli import main
from landscape.data import get_dataset
from landscape.models import build_model
from landscape.results import find_results, read_result

DATA = {"dataset": "synthetic", "dataset_kwargs": {"num_samples": 24, "input_shape": [4], "num_classes": 3, "seed": 1}}
PNG = b"\x89PNG\r\n\x1a\n"


def _model(seed: int, width: int = 6, norm: str = "none"):
    torch.manual_seed(seed)
    return build_model("mlp", input_shape=(4,), num_classes=3, width=width, norm=norm)


def _data():
    return get_dataset("synthetic", "train", **DATA["dataset_kwargs"])


def _train(folder: Path, model, epochs=(1, 2, 3)) -> list[Path]:
    data = _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    for epoch in epochs:
        model.train()
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(model(data.x), data.y).backward()
            opt.step()
        save_checkpoint(folder / f"epoch_{epoch:04d}.pt", model, optimizer=opt, step=3 * epoch, epoch=epoch,
                        config=dict(DATA))
    return sorted(folder.glob("epoch_*.pt"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder with three checkpoints (SGD with momentum, a few steps apart), a BatchNorm
    run with two, and a checkpoint of another architecture."""
    root = tmp_path_factory.mktemp("slice")
    ckpts = _train(root / "sgd", _model(0))
    bn = _train(root / "bn", _model(2, norm="batch"), epochs=(1, 2))
    save_checkpoint(root / "other" / "wide.pt", _model(1, width=9), config=dict(DATA))
    return {"root": root, "folder": root / "sgd", "ckpts": ckpts, "bn": bn, "other": root / "other" / "wide.pt"}


def _loss(path) -> float:
    model = load_checkpoint(path).model.eval()
    data = _data()
    with torch.no_grad():
        return float(F.cross_entropy(model(data.x), data.y))


def _slice(out, *argv) -> tuple[int, Path | None]:
    rc = main(["slice", *map(str, argv), "--out", str(out), "--no-progress"])
    found = [p for ps in find_results(out, "slice").values() for p in ps] if Path(out).exists() else []
    return rc, (sorted(found, key=os.path.getmtime)[-1] if found else None)


def test_one_checkpoint_random_2d_slice_centre_is_the_model(run, tmp_path, capsys):
    a = run["ckpts"][-1]
    rc, path = _slice(tmp_path, a, "--grid=-1:1:5,-0.5:0.5:3", "--seed", "3")
    assert rc == 0, capsys.readouterr().err
    ds = read_result(path)
    assert path.relative_to(tmp_path).parts[:2] == ("sgd", "epoch_0003")
    assert ds.loss.dims == ("run", "step", "alpha", "beta") and ds.loss.shape == (1, 1, 5, 3)
    assert ds.attrs["direction_kind"] == "random" and ds.attrs["normalization"] == "filter"
    assert ds.step.values.tolist() == [9]
    ds = ds.isel(run=0, step=0)
    assert float(ds.loss.sel(alpha=0.0, beta=0.0)) == pytest.approx(_loss(a), rel=1e-5)
    # the directions are the seeded filter-normalized ones: the norm of d1 is that of seed 3's first draw
    model = load_checkpoint(a).model
    g = torch.Generator().manual_seed(3)
    d1 = D.random_direction(model, generator=g)
    assert float(ds.direction_norm.sel(direction="d1")) == pytest.approx(D.norm(d1), rel=1e-5)
    # a second run keeps the good result
    mtime = path.stat().st_mtime_ns
    rc, again = _slice(tmp_path, a, "--grid=-1:1:5,-0.5:0.5:3", "--seed", "3")
    assert rc == 0 and again == path and path.stat().st_mtime_ns == mtime
    assert "kept" in capsys.readouterr().err


def test_interpolation_reaches_the_second_checkpoint_and_plots(run, tmp_path, capsys):
    a, b = run["ckpts"][0], run["ckpts"][2]
    rc, path = _slice(tmp_path, a, b, "--grid", "-0.5:1.5:5", "--plot", "--formats", "png")  # no '=' needed
    assert rc == 0, capsys.readouterr().err
    ds = read_result(path).isel(run=0, step=0)
    assert ds.attrs["direction_kind"] == "interpolation" and int(ds.attrs["ndim"]) == 1
    assert float(ds.loss.sel(alpha=0.0)) == pytest.approx(_loss(a), rel=1e-5)
    assert float(ds.loss.sel(alpha=1.0)) == pytest.approx(_loss(b), rel=1e-4)
    assert list(ds.point_label.values) == ["epoch_0001", "epoch_0003"]
    np.testing.assert_allclose(ds.point_alpha.values.ravel(), [0.0, 1.0])
    assert list(ds.point_step.values.ravel()) == [3, 9]
    figs = sorted(p.name for p in path.parent.glob("*.png"))
    assert figs == [f"slice_interpolation-{path.stem.split('-')[1]}.png"]
    assert (path.parent / figs[0]).read_bytes().startswith(PNG)


def test_plane_passes_through_the_three_checkpoints(run, tmp_path, capsys):
    a, b, c = run["ckpts"]
    rc, path = _slice(tmp_path, a, b, c, "--grid=-0.5:1.5:5")
    assert rc == 0, capsys.readouterr().err
    ds = read_result(path).isel(run=0, step=0)
    assert ds.attrs["direction_kind"] == "plane"
    for ck, (al, be) in ((a, (0.0, 0.0)), (b, (1.0, 0.0)), (c, (0.0, 1.0))):
        assert float(ds.loss.sel(alpha=al, beta=be)) == pytest.approx(_loss(ck), rel=1e-4), ck.name
    assert list(ds.point_label.values) == ["epoch_0001", "epoch_0002", "epoch_0003"]
    np.testing.assert_allclose(np.c_[ds.point_alpha.values, ds.point_beta.values], [[0, 0], [1, 0], [0, 1]])
    # `landscape plot` draws the result from the folder
    rc = main(["plot", str(tmp_path), "--analyses", "slice", "--out", str(tmp_path / "figs"), "--formats", "png"])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["slice_contour.png", "slice_surface.png"]


def test_trajectory_plane_of_a_run(run, tmp_path, capsys):
    rc, path = _slice(tmp_path, "--trajectory", run["folder"], "--grid", "5", "--plot", "--formats", "png")
    assert rc == 0, capsys.readouterr().err
    ds = read_result(path).isel(run=0, step=0)
    assert ds.attrs["direction_kind"] == "trajectory" and "explained_variance" in ds
    assert list(ds.point_step.values) == [3, 6, 9]
    # the centre is the last checkpoint, at the origin
    last = int(np.flatnonzero(ds.point_step.values == 9)[0])
    assert abs(float(ds.point_alpha[last])) < 1e-6 and abs(float(ds.point_beta[last])) < 1e-6
    assert float(ds.loss.sel(alpha=0.0, beta=0.0)) == pytest.approx(_loss(run["ckpts"][-1]), rel=1e-5)
    # --grid 5: five points per axis over the trajectory's extent (and 0), every checkpoint inside
    for axis in ("alpha", "beta"):
        grid, pts = ds[axis].values, ds[f"point_{axis}"].values
        assert grid.size in (5, 6) and grid.min() < pts.min() and grid.max() > pts.max()
    assert "slice_trajectory" in {p.name.split("-")[0] for p in path.parent.glob("*.png")}


def test_momentum_gradient_and_eigenvector_directions(run, tmp_path, capsys):
    a = run["ckpts"][1]
    rc, path = _slice(tmp_path / "m", a, "--direction", "momentum", "--ndim", "1", "--grid", "3")
    assert rc == 0, capsys.readouterr().err
    ds = read_result(path).isel(run=0, step=0)
    assert ds.attrs["direction_kind"] == "momentum" and ds.loss.dims == ("alpha",)
    mom = load_checkpoint(a).momentum()
    d = D.momentum_direction(mom, load_checkpoint(a).model)
    assert float(ds.direction_norm.sel(direction="d1")) == pytest.approx(D.norm(d), rel=1e-5)
    # the gradient direction: the loss rises along +alpha and falls along -alpha
    h = 1e-3
    rc, path = _slice(tmp_path / "g", a, "--direction", "gradient", "--ndim", "1", "--grid", f"{-h}:{h}:3",
                      "--normalization", "none")
    assert rc == 0, capsys.readouterr().err
    loss = read_result(path).isel(run=0, step=0).loss.values
    assert loss[0] < loss[1] < loss[2]
    # the top Hessian eigenvector (unit norm), stored with the result: that of a float64 Hessian
    rc, path = _slice(tmp_path / "e", a, "--direction", "eigenvector", "--ndim", "1", "--grid", "3")
    assert rc == 0, capsys.readouterr().err
    ds = read_result(path).isel(run=0, step=0)
    assert ds.attrs["direction_kind"] == "eigenvector"
    assert float(ds.direction_norm.sel(direction="d1")) == pytest.approx(1.0, rel=1e-5)
    from landscape.analyses.hessian import hessian_spectrum

    ref = hessian_spectrum(load_checkpoint(a).model, _data(), top_k=1, eigenvectors=True, trace=False,
                           density=False, progress=False, dtype="float64")
    v = ref.eigenvectors.isel(k=0).values
    stored = D.directions_from_dataset(ds, load_checkpoint(a).model)[0]
    flat = D.to_flat(stored, load_checkpoint(a).model).double().numpy()
    assert abs(float(flat @ v) / (np.linalg.norm(flat) * np.linalg.norm(v))) > 0.999


def test_batchnorm_interpolation_is_explicit_about_its_statistics(run, tmp_path, capsys):
    """With BatchNorm, alpha = 1 has B's weights but (bn_mode=eval) A's running statistics: the
    command says so; bn_mode=recompute re-estimates them at every point, so alpha = 1 is B with
    statistics re-estimated on the data (ground truth: B's BatchNorm reset and run over the data)."""
    a, b = run["bn"]
    rc, path = _slice(tmp_path / "eval", a, b, "--grid", "3")
    assert rc == 0
    assert "running statistics of epoch_0001" in capsys.readouterr().err
    rc, path = _slice(tmp_path / "rec", a, b, "--grid", "3", "--bn-mode", "recompute")
    assert rc == 0, capsys.readouterr().err
    ds = read_result(path).isel(run=0, step=0)
    assert ds.attrs["bn_mode"] == "recompute"
    model, data = load_checkpoint(b).model, _data()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch of 24 gives its own statistics
    with torch.no_grad():
        model.train()(data.x)
        truth = float(F.cross_entropy(model.eval()(data.x), data.y))
    assert float(ds.loss.sel(alpha=1.0)) == pytest.approx(truth, rel=1e-4)


def test_bad_input_is_exit_2_with_a_message(run, tmp_path, capsys):
    a, b, c = run["ckpts"]
    cases = [
        ((a, run["other"]), "architecture"),
        ((a, b, c, a), "4 checkpoints"),
        ((a, b, "--direction", "momentum"), "--direction momentum applies to one checkpoint"),
        ((a, "--grid=1:2:0"), "no points"),
        ((a, "--grid", "x"), "--grid"),
        ((a, "--trajectory", run["folder"]), "takes no checkpoint"),
        ((tmp_path / "missing.pt",), "missing.pt"),
        ((), "one, two or three"),
        ((a, b, "--ndim", "2"), "1-D"),
    ]
    for argv, message in cases:
        rc, _ = _slice(tmp_path / "out", *argv)
        err = capsys.readouterr().err
        assert rc == 2, (argv, err)
        assert message in err, (argv, err)
    assert not (tmp_path / "out").exists() or not find_results(tmp_path / "out", "slice")


def test_autocast_and_memory_format_flags_reach_the_analysis(run, tmp_path, capsys):
    a = run["ckpts"][-1]
    rc, path = _slice(tmp_path, a, "--grid=-1:1:3,-1:1:3", "--autocast", "bf16", "--memory-format", "contiguous")
    assert rc == 0, capsys.readouterr().err
    ds = read_result(path)
    assert ds.attrs["autocast"] == "bf16" and ds.attrs["memory_format"] == "contiguous"
    assert "autocast_centre_error" in ds
    rc, other = _slice(tmp_path, a, "--grid=-1:1:3,-1:1:3")
    assert rc == 0 and other != path  # other options, another result file beside the first


def test_keep_directions_skip_existing_and_recompute_batches_flags(run, tmp_path, capsys):
    a = run["ckpts"][-1]
    args = ("--grid=-1:1:3", "--ndim", "1", "--no-keep-directions", "--bn-mode", "recompute",
            "--recompute-batches", "1")
    rc, path = _slice(tmp_path, a, *args)
    assert rc == 0, capsys.readouterr().err
    ds = read_result(path)
    assert "direction_vector" not in ds and ds.attrs["recompute_batches"] == 1
    mtime = path.stat().st_mtime_ns
    rc, again = _slice(tmp_path, a, *args, "--no-skip-existing")
    assert rc == 0 and again == path and path.stat().st_mtime_ns > mtime  # recomputed, same file
    np.testing.assert_allclose(read_result(again).loss.values, ds.loss.values)
