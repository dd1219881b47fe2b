"""The results store: provenance, atomic writes, combining a folder over (run, step)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import xarray as xr

from landscape import results
from landscape.results import (
    ResultError,
    open_results,
    options_hash,
    read_result,
    result_path,
    write_result,
)

SHA = "ab" * 32


def _ds(seed: float, k: int = 3) -> xr.Dataset:
    return xr.Dataset(
        {
            "eig": ("k", np.arange(k) + seed, {"long_name": "eigenvalue", "units": "1"}),
            "count": ((), np.int64(7), {"long_name": "calls", "units": "1"}),
        },
        coords={"k": ("k", np.arange(k), {"long_name": "index", "units": "1"})},
        attrs={"config_json": '{"top_k": 3}'},
    )


def _write(out, run, stem, step, hash_="0123456789", analysis="demo", seed=None, epoch=0):
    path = result_path(out, run, f"/ckpts/{run}/{stem}.pt", analysis, hash_)
    return write_result(
        _ds(step if seed is None else seed), path, analysis=analysis, run=run, step=step,
        checkpoint=f"/ckpts/{run}/{stem}.pt", checkpoint_sha256=SHA, options_hash=hash_,
        attrs={"epoch": epoch, "device": "cpu", "data_json": "{}", "checkpoint_config_json": "{}"},
    )


def test_options_hash_is_stable_and_canonical():
    h = options_hash("hessian", {"top_k": 5, "tol": 1e-3}, {"split": "train"})
    assert h == options_hash("hessian", {"tol": 1e-3, "top_k": 5.0}, {"split": "train"})
    assert options_hash("s", {"rho": [1, 2]}) == options_hash("s", {"rho": (1.0, 2.0)})
    assert h != options_hash("hessian", {"top_k": 6, "tol": 1e-3}, {"split": "train"})
    assert h != options_hash("hessian", {"top_k": 5, "tol": 1e-3}, {"split": "test"})
    assert h != options_hash("sharpness", {"top_k": 5, "tol": 1e-3}, {"split": "train"})
    assert len(h) == 10 and all(c in "0123456789abcdef" for c in h)


def test_result_path_layout():
    p = result_path("res", "sam/seed0", "ck/sam/seed0/epoch_0003.pt", "hessian", "0123456789")
    assert p.as_posix() == "res/sam/seed0/epoch_0003/hessian-0123456789.nc"
    # Odd characters cannot escape the results folder.
    p = result_path("res", "../x y", "a b.pt", "h", "0123456789")
    assert p.parts[:2] == ("res", results.safe_name("..")) and p.parts[2].startswith("x_y-h")
    assert ".." not in p.parts and p.parts[3].startswith("a_b-h")
    # Other layouts keep their suffix, so model.ckpt and model.safetensors get two folders.
    assert result_path("r", "x", "model.ckpt", "h", "0" * 10).parent.name == "model.ckpt"


def test_result_paths_are_unique_by_construction():
    """Issue 10 item 3: distinct (run, checkpoint) names never share a result path."""
    runs = ["greek/sam-α", "greek/sam-β", "sam-", "sam_", "sam", "a b", "a_b", "a  b", "..", "_", ".x",
            "x.", "日本", "中国", "sam--h2f5cf82f", "x" * 200, "x" * 201, "ümlaut", "u\u0308mlaut"]
    ckpts = ["epoch 1.pt", "epoch_1.pt", "epoch-1.pt", "epoch\t1.pt", "épock.pt", "e.pt", "e.pth",
             "e", "e.ckpt", "e.safetensors", "..pt", "_.pt", "e?.pt", "e*.pt"]
    paths = {}
    for run in runs:
        for ck in ckpts:
            p = result_path("res", run, ck, "hessian", "0123456789")
            assert p not in paths, (run, ck, paths.get(p))
            paths[p] = (run, ck)
            assert p.parts[0] == "res" and ".." not in p.parts
            assert all(len(part) <= 100 and part.isascii() for part in p.parts)
            assert p == result_path("res", run, ck, "hessian", "0123456789")  # pure
    # Names that need no sanitizing are kept as they are.
    assert result_path("res", "sam/seed0", "x/epoch_0003.pt", "h", "0" * 10).as_posix() == "res/sam/seed0/epoch_0003/h-0000000000.nc"


def test_read_json_names_a_corrupt_file(tmp_path):
    bad = tmp_path / "run.json"
    bad.write_text('{"history": [1, 2')
    with pytest.raises(ResultError, match="run.json: not a readable JSON file"):
        results.read_json(bad)
    with pytest.raises(ResultError, match="nope.json: no such file"):
        results.read_json(tmp_path / "nope.json")


def test_open_results_skips_foreign_nc_files(tmp_path):
    """Issue 10 item 13: a foreign .nc (even one named like a result) does not break open_results."""
    _write(tmp_path, "r", "e0", 0)
    _write(tmp_path, "r", "e1", 1)
    foreign = tmp_path / "r" / "e2" / "demo-0123456789.nc"
    foreign.parent.mkdir()
    xr.Dataset({"eig": ("k", np.arange(4.0))}).to_netcdf(foreign, engine="h5netcdf")
    with pytest.warns(UserWarning, match="ignored 1 file"):
        ds = open_results(tmp_path, "demo")
    assert ds.sizes["step"] == 2
    assert len(ds.attrs["ignored_files"]) == 1 and "e2" in ds.attrs["ignored_files"][0]
    assert "not a landscape 'demo' result" in ds.attrs["ignored_files"][0]
    # A file that cannot be read at all is an error that names it.
    corrupt = tmp_path / "r" / "e3" / "demo-0123456789.nc"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"\x89HDF\r\n\x1a\n garbage")
    with pytest.raises(ResultError, match="e3/demo-0123456789.nc: not a readable result file"):
        open_results(tmp_path, "demo")


def test_open_results_keeps_per_file_scalar_attrs_as_coords(tmp_path):
    """Issue 9 item 8: sigma, timings (any scalar attribute that differs) become (run, step) coords."""
    kw = dict(analysis="demo", checkpoint_sha256=SHA, options_hash="0123456789")
    for step, extra in ((0, {"sigma": 0.5, "seconds": 1.25, "label": "a", "n_calls": 3}),
                        (1, {"sigma": 0.75, "seconds": 2.5, "label": "b", "n_calls": 4}),
                        (2, {"sigma": 0.75, "label": "c"})):
        ds = _ds(step)
        ds.attrs.update(extra, shared="same", eig=f"clash {step}")  # an attribute named like a variable
        write_result(ds, result_path(tmp_path, "r", f"e{step}.pt", "demo", "0123456789"), run="r", step=step,
                     checkpoint=f"e{step}.pt", **kw)
    ds = open_results(tmp_path, "demo")
    assert ds["sigma"].dims == ("run", "step") and ds["sigma"].values.tolist() == [[0.5, 0.75, 0.75]]
    np.testing.assert_array_equal(ds["seconds"].values, [[1.25, 2.5, np.nan]])
    assert ds["label"].values.tolist() == [["a", "b", "c"]]
    assert ds["n_calls"].values.tolist() == [[3, 4, -1]]
    assert ds.attrs["shared"] == "same" and "sigma" not in ds.attrs


def test_write_read_roundtrip_with_provenance(tmp_path):
    p = _write(tmp_path, "r1", "epoch_0002", step=20, epoch=2)
    assert p == tmp_path / "r1" / "epoch_0002" / "demo-0123456789.nc"
    ds = read_result(p)
    assert ds["eig"].dims == ("run", "step", "k")
    assert ds["count"].dims == ("run", "step")
    assert ds["run"].values.tolist() == ["r1"] and ds["step"].values.tolist() == [20]
    np.testing.assert_array_equal(ds["eig"].values[0, 0], [20, 21, 22])
    assert ds["eig"].attrs == {"long_name": "eigenvalue", "units": "1"}
    for key in ("landscape_version", "analysis", "created", "checkpoint", "checkpoint_sha256",
                "torch_version", "config_json", "options_hash", "epoch", "device"):
        assert key in ds.attrs, key
    assert ds.attrs["checkpoint_sha256"] == SHA and ds.attrs["config_json"] == '{"top_k": 3}'
    assert results.read_attrs(p)["options_hash"] == "0123456789"
    assert not [f for f in p.parent.iterdir() if f.name != p.name]  # no temp files left


def test_write_rejects_bad_input(tmp_path):
    kw = dict(analysis="demo", run="r", step=0, checkpoint="c.pt", checkpoint_sha256=SHA, options_hash="0123456789")
    with pytest.raises(ResultError, match="'run'"):
        write_result(_ds(0).expand_dims(run=["x"]), tmp_path / "a.nc", **kw)
    with pytest.raises(ResultError, match="attribute 'bad'"):
        write_result(_ds(0), tmp_path / "a.nc", attrs={"bad": {"nested": 1}}, **kw)
    assert not list(tmp_path.rglob("*.nc"))


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(results.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        _write(tmp_path, "r", "e", 0)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_killed_writer_leaves_no_nc_and_next_write_cleans_up(tmp_path):
    # A process killed between writing the temp file and renaming it (os._exit: no cleanup runs).
    code = textwrap.dedent(f"""
        import os, numpy as np, xarray as xr
        from landscape import results
        results.os.replace = lambda *a: os._exit(9)
        ds = xr.Dataset({{"x": ("k", np.arange(3.0), {{"long_name": "x", "units": "1"}})}})
        results.write_result(ds, {str(tmp_path / "r" / "e" / "demo-0123456789.nc")!r}, analysis="demo",
            run="r", step=0, checkpoint="c.pt", checkpoint_sha256="0" * 64, options_hash="0123456789")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 1 and files[0].name.startswith(".demo-0123456789.nc.") and files[0].suffix == ".tmp"
    assert results.find_results(tmp_path, "demo") == {}
    assert results.existing_result(tmp_path / "r" / "e" / "demo-0123456789.nc") == "missing"
    _write(tmp_path, "r", "e", 0)
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["demo-0123456789.nc"]


def test_existing_result_states(tmp_path):
    p = _write(tmp_path, "r", "e", 0)
    assert results.existing_result(p, SHA) == "current"
    assert results.existing_result(p, "cd" * 32) == "stale"
    assert results.existing_result(p) == "current"
    assert results.existing_result(tmp_path / "nope.nc", SHA) == "missing"
    bad = tmp_path / "r" / "x" / "demo-0123456789.nc"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not netcdf")
    assert results.existing_result(bad, SHA) == "stale"


def test_open_results_two_runs_three_checkpoints(tmp_path):
    steps = {"sgd": [0, 10, 20], "sam": [0, 15, 30]}
    for run, ss in steps.items():
        for i, s in enumerate(ss):
            _write(tmp_path, run, f"epoch_{i:04d}", s, seed=100 * (run == "sam") + s, epoch=i)
    # Other analyses whose names share a prefix and stray files are ignored.
    _write(tmp_path, "sgd", "epoch_0000", 0, analysis="demo_other")
    (tmp_path / "sgd" / "epoch_0000" / "demo-xyz.nc").write_bytes(b"junk")
    ds = open_results(tmp_path, "demo")
    assert ds["eig"].dims == ("run", "step", "k")
    assert ds.sizes == {"run": 2, "step": 5, "k": 3}
    assert sorted(ds["run"].values.tolist()) == ["sam", "sgd"]
    assert ds["step"].values.tolist() == [0, 10, 15, 20, 30]
    for run, ss in steps.items():
        for i, s in enumerate(ss):
            one = read_result(tmp_path / run / f"epoch_{i:04d}" / "demo-0123456789.nc")
            np.testing.assert_array_equal(ds["eig"].sel(run=run, step=s), one["eig"].values[0, 0])
            assert ds["checkpoint"].sel(run=run, step=s).item() == f"/ckpts/{run}/epoch_{i:04d}.pt"
            assert ds["checkpoint_sha256"].sel(run=run, step=s).item() == SHA
            assert ds["epoch"].sel(run=run, step=s).item() == i
    # (sgd, 15) does not exist: NaN data, empty provenance.
    assert np.isnan(ds["eig"].sel(run="sgd", step=15)).all()
    assert ds["checkpoint"].sel(run="sgd", step=15).item() == ""
    assert ds["epoch"].sel(run="sgd", step=15).item() == -1
    assert ds.attrs["analysis"] == "demo" and ds.attrs["options_hash"] == "0123456789"
    assert "created" not in ds.attrs and "checkpoint" not in ds.attrs


def test_open_results_refuses_to_mix_option_sets(tmp_path):
    _write(tmp_path, "r", "e0", 0, hash_="aaaaaaaaaa")
    _write(tmp_path, "r", "e1", 1, hash_="aaaaaaaaaa")
    _write(tmp_path, "r", "e0", 0, hash_="bbbbbbbbbb", seed=5)
    with pytest.raises(ResultError, match="2 different option sets") as err:
        open_results(tmp_path, "demo")
    assert "aaaaaaaaaa: 2 files" in str(err.value) and "bbbbbbbbbb: 1 files" in str(err.value)
    assert open_results(tmp_path, "demo", options_hash="aaaa").sizes["step"] == 2
    assert float(open_results(tmp_path, "demo", options_hash="bbbbbbbbbb")["eig"][0, 0, 0]) == 5
    with pytest.raises(ResultError, match="matches 0"):
        open_results(tmp_path, "demo", options_hash="cc")
    with pytest.raises(ResultError, match="no 'nothing' results"):
        open_results(tmp_path, "nothing")


def test_open_results_duplicate_step_prefers_epoch_file(tmp_path):
    _write(tmp_path, "r", "epoch_0001", 10, seed=1)
    _write(tmp_path, "r", "last", 10, seed=2)
    ds = open_results(tmp_path, "demo")
    assert ds.sizes["step"] == 1 and float(ds["eig"][0, 0, 0]) == 1
    assert ds.attrs["duplicates_dropped"] == "/ckpts/r/last.pt" or ds.attrs["duplicates_dropped"] == ["/ckpts/r/last.pt"]


def test_combined_dataset_can_be_saved(tmp_path):
    for s in (0, 1):
        _write(tmp_path / "res", "r", f"e{s}", s)
    ds = open_results(tmp_path / "res", "demo")
    ds.to_netcdf(tmp_path / "all.nc", engine="h5netcdf")
    back = xr.open_dataset(tmp_path / "all.nc", engine="h5netcdf").load()
    xr.testing.assert_identical(back["eig"], ds["eig"])


def test_write_json_atomic(tmp_path):
    p = results.write_json(tmp_path / "a" / "summary.json", {"x": [1, 2], "p": tmp_path})
    assert json.loads(p.read_text())["x"] == [1, 2]
    assert os.listdir(p.parent) == ["summary.json"]
