"""Batch analysis: failure isolation, resumability, executors, CLI."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import pickle
import re
import shutil
import signal
import sys
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from landscape import results
from landscape.analyses.norm_params import norm_params
from landscape.analyses.registry import (
    DataOptions,
    analysis_names,
    ensure_registered,
    entry_spec,
    get_analysis,
    register_analysis,
    resolve_options,
    unregister_analysis,
)
from landscape.batch import RunTask, Summary, Task, analyze, run_task
from landscape.checkpoint import file_sha256, load_checkpoint, save_checkpoint
from landscape.cli_analyze import main, parse_minutes, parse_set, parse_slurm
from landscape.config import ConfigError, Options
from landscape.models import build_model

DATA = {"dataset": "synthetic", "dataset_kwargs": {"num_samples": 24, "input_shape": [4], "num_classes": 3, "seed": 1}}
TESTS_DIR = str(Path(__file__).parent)


# ---------------------------------------------------------------- analyses used by these tests
# Module-level, so spawned workers import them by name ("test_batch:loss_stats").


@dataclass(frozen=True)
class LossStatsOptions(Options):
    batch_size: int = 8
    seed: int = 0


def loss_stats(model, data, *, batch_size=8, seed=0):
    """Per-batch loss, gradient norm and a gradient projection: floating-point work whose
    bits depend on every input, for the bitwise executor comparison."""
    g = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters()]
    direction = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    losses, norms, proj = [], [], []
    for xb, yb in data.batches(batch_size):
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        grads = torch.autograd.grad(loss, params)
        losses.append(loss.item())
        norms.append(torch.sqrt(sum((gr * gr).sum() for gr in grads)).item())
        proj.append(sum((gr * d).sum() for gr, d in zip(grads, direction)).item())
    one = {"units": "1"}
    return xr.Dataset(
        {
            "loss": ("batch", losses, {"long_name": "batch loss", **one}),
            "grad_norm": ("batch", norms, {"long_name": "gradient norm", **one}),
            "grad_proj": ("batch", proj, {"long_name": "gradient . random direction", **one}),
            "threads": ((), torch.get_num_threads(), {"long_name": "torch threads in the task", **one}),
            "n": ((), len(data), {"long_name": "examples seen", **one}),
        },
        attrs={"config_json": json.dumps({"batch_size": batch_size, "seed": seed})},
    )


@dataclass(frozen=True)
class KillerOptions(Options):
    counter_dir: str = ""
    kill_at: int = 3


def killer(model, data, *, counter_dir, kill_at):
    """The ``kill_at``-th task started dies by SIGKILL in the middle of writing its result
    (after the temporary file is written, before it is renamed), like an OOM kill."""
    i = 1
    while True:
        try:
            os.close(os.open(os.path.join(counter_dir, str(i)), os.O_CREAT | os.O_EXCL))
            break
        except FileExistsError:
            i += 1
    if i == kill_at:
        os.replace = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    return norm_params(model)


def failing(model, data, *, batch_size=8, seed=0):
    raise RuntimeError("analysis exploded on purpose")


@dataclass(frozen=True)
class NeedsOptions(Options):
    n: int = 64

    def required_samples(self) -> int:
        return self.n


def needs(model, data, *, n=64):
    return norm_params(model)


# Registered for this module's tests only (other modules' registry-wide tests must not see them);
# spawned workers get them from the tasks' entry specs.
TEST_ANALYSES = {
    "t_loss_stats": (loss_stats, LossStatsOptions, True),
    "t_killer": (killer, KillerOptions, False),
    "t_failing": (failing, LossStatsOptions, True),
    "t_needs": (needs, NeedsOptions, True),
}


@pytest.fixture(scope="module", autouse=True)
def _test_analyses():
    for name, (fn, opts, needs_data) in TEST_ANALYSES.items():
        register_analysis(name, fn, opts, needs_data=needs_data, replace=True)
    yield
    for name in TEST_ANALYSES:
        unregister_analysis(name)


# ---------------------------------------------------------------- checkpoint folders


def _save(path, seed, step, config=DATA):
    torch.manual_seed(seed)
    m = build_model("mlp", input_shape=(4,), num_classes=3, width=6, depth=2, norm="batch")
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    return save_checkpoint(path, m, step=step, epoch=step // 10, metrics={"train_loss": 1.0}, config=config)


def _good_folder(root: Path) -> Path:
    for r, run in enumerate(("sgd", "sam")):
        for i in range(3):
            _save(root / run / f"epoch_{i:04d}.pt", seed=10 * r + i, step=10 * i + 5 * r)
    return root


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _add_bad_files(root: Path, marker: Path) -> dict[str, Path]:
    good = (root / "sgd" / "epoch_0000.pt").read_bytes()
    bad = {
        "truncated": root / "sgd" / "truncated.pt",
        "random": root / "sam" / "random.pt",
        "evil_torch": root / "sam" / "evil_torch.pt",
        "evil_raw": root / "sgd" / "evil_raw.pt",
    }
    bad["truncated"].write_bytes(good[: len(good) // 2])
    bad["random"].write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    torch.save({"model_state": _Evil(marker)}, bad["evil_torch"])
    bad["evil_raw"].write_bytes(pickle.dumps(_Evil(marker)))
    return bad


def _nc_files(out: Path) -> list[Path]:
    return sorted(out.rglob("*.nc"))


@pytest.fixture
def ckpts(tmp_path):
    return _good_folder(tmp_path / "ckpts")


@pytest.fixture(scope="module")
def batch_run(tmp_path_factory):
    """Two runs x three good checkpoints plus four bad files, analysed once, serially."""
    root = tmp_path_factory.mktemp("batch")
    ckpts = _good_folder(root / "ckpts")
    marker = root / "pwned"
    bad = _add_bad_files(ckpts, marker)
    out = root / "res"
    summary = analyze(ckpts, ["norm_params", "t_loss_stats"], out=out, progress=False)
    return {"ckpts": ckpts, "out": out, "summary": summary, "marker": marker, "bad": bad}


# ---------------------------------------------------------------- failure isolation


def test_bad_files_reported_good_ones_analysed_nothing_executed(batch_run):
    s, out = batch_run["summary"], batch_run["out"]
    assert not batch_run["marker"].exists()
    assert len(s.done) == 6 * 2 and len(s.skipped) == 0 and len(s.failed) == 4 * 2
    assert {Path(r["checkpoint"]).name for r in s.done} == {f"epoch_{i:04d}.pt" for i in range(3)}
    errors = {(Path(r["checkpoint"]).stem, r["analysis"]): r["error"] for r in s.failed}
    for analysis in ("norm_params", "t_loss_stats"):
        assert "CheckpointError" in errors[("truncated", analysis)]
        assert "truncated.pt" in errors[("truncated", analysis)]
        assert "random.pt" in errors[("random", analysis)]
        for evil in ("evil_torch", "evil_raw"):
            assert "code execution" in errors[(evil, analysis)]
    # No result for a bad file, one readable result per good (checkpoint, analysis).
    files = _nc_files(out)
    assert len(files) == 12
    for f in files:
        attrs = results.read_attrs(f)
        assert attrs["checkpoint_sha256"] == file_sha256(attrs["checkpoint"])
    # summary.json is the same summary.
    disk = json.loads((out / "summary.json").read_text())
    assert disk["counts"] == {"done": 12, "skipped": 0, "failed": 8}
    assert {r["error"] for r in disk["failed"]} == {r["error"] for r in s.failed}
    assert not s.ok


def test_failing_analysis_does_not_stop_the_others(tmp_path, ckpts):
    s = analyze(ckpts / "sgd", "t_failing,norm_params", out=tmp_path / "res", progress=False)
    assert len(s.failed) == 3 and len(s.done) == 3
    assert all(r["error"] == "RuntimeError: analysis exploded on purpose" for r in s.failed)
    assert all("Traceback" in r["traceback"] and "failing" in r["traceback"] for r in s.failed)


def test_missing_analysis_module_breaks_only_itself(tmp_path, ckpts):
    register_analysis("t_missing", "no_such_module_xyz:fn", "no_such_module_xyz:Opts")
    try:
        assert "t_missing" in analysis_names()
        assert analyze(ckpts / "sgd" / "epoch_0000.pt", "norm_params", out=tmp_path / "res", progress=False).ok
        with pytest.raises(ConfigError, match="'t_missing' is not available"):
            analyze(ckpts, "t_missing", out=tmp_path / "res", progress=False)
        # Its table in a shared config file does not block other analyses.
        resolve_options(["norm_params"], {"t_missing": {"x": 1}})
    finally:
        unregister_analysis("t_missing")


# ---------------------------------------------------------------- resuming, options, staleness


def test_skip_existing_and_no_skip(tmp_path, batch_run):
    out = tmp_path / "res"
    shutil.copytree(batch_run["out"], out)
    stamps = {f: f.stat().st_mtime_ns for f in _nc_files(out)}
    s = analyze(batch_run["ckpts"], "norm_params,t_loss_stats", out=out, progress=False)
    assert (len(s.done), len(s.skipped), len(s.failed)) == (0, 12, 8)
    assert {f: f.stat().st_mtime_ns for f in _nc_files(out)} == stamps
    s = analyze(batch_run["ckpts"] / "sgd" / "epoch_0001.pt", "norm_params", out=out, skip_existing=False, progress=False)
    assert (len(s.done), len(s.skipped)) == (1, 0)
    changed = [f for f in _nc_files(out) if f.stat().st_mtime_ns != stamps[f]]
    assert changed == [Path(s.done[0]["result"])]


def test_changed_options_never_overwrite(tmp_path, ckpts):
    out, ckpts = tmp_path / "res", ckpts / "sgd"
    analyze(ckpts, "norm_params", out=out, progress=False)
    before = {f: f.read_bytes() for f in _nc_files(out)}
    s = analyze(ckpts, "norm_params", out=out, options={"norm_params": {"bins": 5}}, progress=False)
    assert len(s.done) == 3
    files = _nc_files(out)
    assert len(files) == 6
    assert all(f.read_bytes() == b for f, b in before.items())
    new = [f for f in files if f not in before]
    assert {results.read_result(f).sizes["bin"] for f in new} == {5}
    # Same options, spelled differently (float for int), hash alike: nothing new to do.
    s = analyze(ckpts, "norm_params", out=out, options={"norm_params": {"bins": 5, "quantiles": [0, 0.05, 0.25, 0.5, 0.75, 0.95, 1]}}, progress=False)
    assert len(s.skipped) == 3
    # Data options are part of the hash too.
    one = ckpts / "epoch_0000.pt"
    s = analyze(one, "t_loss_stats", out=out, progress=False)
    s2 = analyze(one, "t_loss_stats", out=out, options={"data": {"n": 16}}, progress=False)
    assert len(s.done) == len(s2.done) == 1
    assert {Path(r["result"]).name for r in s.done}.isdisjoint({Path(r["result"]).name for r in s2.done})


def test_overwritten_checkpoint_is_recomputed(tmp_path, ckpts):
    out = tmp_path / "res"
    analyze(ckpts, "norm_params", out=out, progress=False)
    target = ckpts / "sam" / "epoch_0001.pt"
    _save(target, seed=99, step=15)
    s = analyze(ckpts, "norm_params", out=out, progress=False)
    assert len(s.skipped) == 5 and len(s.done) == 1
    assert s.done[0]["checkpoint"] == str(target.resolve()) and "older version" in s.done[0]["note"]
    res = results.read_result(Path(s.done[0]["result"]))
    expect = norm_params(load_checkpoint(target).model)
    np.testing.assert_array_equal(res["mean"].values[0, 0], expect["mean"].values)


def test_killed_worker_task_is_retried_and_nothing_partial_is_left(tmp_path, ckpts):
    # The third task started dies by SIGKILL between writing its temporary file and renaming it.
    # Only that task is affected: it is retried in a fresh worker (which removes the dead
    # worker's temporary file when it writes the same result), the others go on.
    out, counter = tmp_path / "res", tmp_path / "counter"
    counter.mkdir()
    opts = {"t_killer": {"counter_dir": str(counter), "kill_at": 3}}
    s1 = analyze(ckpts, "t_killer", out=out, options=opts, workers=2, progress=False)
    assert s1.ok and len(s1.done) == 6, s1.failed
    assert [r.get("attempts", 1) for r in s1.done].count(2) == 1
    assert len(os.listdir(counter)) == 7
    assert len(_nc_files(out)) == 6 and not [p for p in out.rglob("*.tmp")]
    for f in _nc_files(out):
        assert results.read_result(f).sizes["layer"] == 2
    s2 = analyze(ckpts, "t_killer", out=out, options=opts, progress=False)
    assert len(s2.skipped) == 6 and not s2.failed


# ---------------------------------------------------------------- combining


def test_open_results_over_two_runs_of_three_checkpoints(batch_run):
    ckpts, out = batch_run["ckpts"], batch_run["out"]
    ds = results.open_results(out, "norm_params")
    assert ds["mean"].dims == ("run", "step", "layer", "param")
    assert sorted(ds["run"].values.tolist()) == ["sam", "sgd"]
    assert ds["step"].values.tolist() == [0, 5, 10, 15, 20, 25]
    for run, offset in (("sgd", 0), ("sam", 5)):
        for i in range(3):
            ck = ckpts / run / f"epoch_{i:04d}.pt"
            expect = norm_params(load_checkpoint(ck).model)
            got = ds.sel(run=run, step=10 * i + offset)
            np.testing.assert_array_equal(got["mean"].values, expect["mean"].values)
            assert got["checkpoint"].item() == str(ck.resolve())
            assert got["checkpoint_sha256"].item() == file_sha256(ck)
            assert json.loads(got["checkpoint_config_json"].item())["dataset"] == "synthetic"
    # Steps of the other run are missing here: NaN, not zeros.
    assert np.isnan(ds["mean"].sel(run="sgd", step=5)).all()
    loss = results.open_results(out, "t_loss_stats")
    assert loss["loss"].dims == ("run", "step", "batch") and loss.sizes["batch"] == 3
    assert json.loads(loss["data_json"].sel(run="sgd", step=0).item())["dataset"] == "synthetic"


def test_nested_runs_are_named_by_relative_folder(tmp_path):
    for opt in ("sgd", "sam"):
        _save(tmp_path / "ck" / opt / "seed0" / "epoch_0001.pt", seed=1, step=10)
    out = tmp_path / "res"
    s = analyze(tmp_path / "ck", "norm_params", out=out, progress=False)
    assert sorted(r["run"] for r in s.done) == ["sam/seed0", "sgd/seed0"]
    assert (out / "sam" / "seed0" / "epoch_0001").is_dir()
    assert sorted(results.open_results(out, "norm_params")["run"].values.tolist()) == ["sam/seed0", "sgd/seed0"]
    # The same files named one by one would collide in results/seed0/epoch_0001.
    with pytest.raises(ValueError, match="share the results folder"):
        analyze(sorted((tmp_path / "ck").rglob("*.pt")), "norm_params", out=out, progress=False)


# ---------------------------------------------------------------- executors


def _variables(out: Path) -> dict[str, dict[str, np.ndarray]]:
    got = {}
    for f in _nc_files(out):
        ds = results.read_result(f)
        got[f.relative_to(out).as_posix()] = {k: ds[k].values for k in ds.data_vars}
    return got


# ~20 s (every submitit job is a fresh Python process importing torch): the check that executors
# give bitwise-equal files runs in `make test-all`, so `make test` keeps its margin under 10
# minutes (the in-process executors below stay in `make test`).
@pytest.mark.slow
def test_process_pool_and_submitit_local_are_bitwise_equal(tmp_path, ckpts, monkeypatch):
    submitit = pytest.importorskip("submitit")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([TESTS_DIR, os.environ.get("PYTHONPATH", "")]))
    folder = tmp_path / "two"
    for i in range(2):
        shutil.copy(ckpts / "sgd" / f"epoch_{i:04d}.pt", folder.mkdir(exist_ok=True) or folder)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        s1 = analyze(folder, "t_loss_stats", out=tmp_path / "a", executor=pool, threads=1, progress=False)
    ex = submitit.LocalExecutor(folder=tmp_path / "submitit")
    ex.update_parameters(timeout_min=5)
    s2 = analyze(folder, "t_loss_stats", out=tmp_path / "b", executor=ex, threads=1, progress=False)
    assert s1.ok and s2.ok and len(s1.done) == len(s2.done) == 2, (s1.failed, s2.failed)
    a, b = _variables(tmp_path / "a"), _variables(tmp_path / "b")
    assert a.keys() == b.keys() and len(a) == 2
    for f in a:
        for k in a[f]:
            assert a[f][k].dtype == b[f][k].dtype
            assert a[f][k].tobytes() == b[f][k].tobytes(), (f, k)
        assert a[f]["threads"].item() == 1


def test_any_submit_result_executor(tmp_path, ckpts):
    class Lazy:
        """Minimal executor: runs a task only when its result is asked for."""

        def submit(self, fn, *args):
            return type("F", (), {"result": lambda self_: fn(*args)})()

    s = analyze(ckpts / "sgd", "t_loss_stats", out=tmp_path / "a", executor=Lazy(), progress=False)
    assert len(s.done) == 3
    with ThreadPoolExecutor(2) as pool:
        s = analyze(ckpts / "sgd", "t_loss_stats", out=tmp_path / "b", executor=pool, progress=False)
    assert len(s.done) == 3
    s = analyze(ckpts / "sgd", "t_loss_stats", out=tmp_path / "c", progress=False)
    a, b, c = (_variables(tmp_path / x) for x in "abc")
    assert a.keys() == b.keys() == c.keys()
    for f in a:
        for k in a[f]:
            assert a[f][k].tobytes() == b[f][k].tobytes() == c[f][k].tobytes()


def test_dask_distributed_client(tmp_path, ckpts):
    distributed = pytest.importorskip("distributed")
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
        s = analyze(ckpts / "sgd", "t_loss_stats", out=tmp_path / "d", executor=client, progress=False)
    assert len(s.done) == 3 and not s.failed
    analyze(ckpts / "sgd", "t_loss_stats", out=tmp_path / "c", progress=False)
    d, c = _variables(tmp_path / "d"), _variables(tmp_path / "c")
    assert d.keys() == c.keys()
    for f in d:
        for k in d[f]:
            assert d[f][k].tobytes() == c[f][k].tobytes()


def test_threads_set_per_task_and_restored(tmp_path, ckpts):
    before = torch.get_num_threads()
    s = analyze(ckpts / "sgd", "t_loss_stats", out=tmp_path / "res", threads=1, progress=False)
    assert len(s.done) == 3
    assert all(results.read_result(Path(r["result"]))["threads"].item() == 1 for r in s.done)
    assert torch.get_num_threads() == before


def test_run_task_is_self_contained(tmp_path, ckpts):
    # A task is plain data (what a Slurm job receives) and skips its own finished result.
    s = analyze(ckpts / "sgd", "norm_params", out=tmp_path / "res", progress=False)
    rec = s.done[0]
    task = Task(checkpoint=rec["checkpoint"], run="sgd", analysis="norm_params", result=rec["result"],
                hash=Path(rec["result"]).stem.split("-")[1])
    assert pickle.loads(pickle.dumps(task)) == task
    assert run_task(task)["status"] == "skipped"
    assert run_task(dataclasses.replace(task, skip_existing=False))["status"] == "done"
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.result = "elsewhere.nc"


def test_builtin_hessian_and_sharpness_equal_direct_calls(tmp_path, ckpts):
    # The batch path (registry, options, data from the checkpoint config) computes exactly what
    # calling the analysis on the loaded checkpoint does.
    from landscape.analyses.hessian import HessianOptions, hessian_spectrum
    from landscape.analyses.sharpness import SharpnessOptions, sharpness
    from landscape.data import get_dataset

    opts = {"data": {"n": 16},
            "hessian": {"top_k": 2, "trace": False, "slq_runs": 1, "slq_steps": 5, "grid_points": 50, "batch_size": 8},
            "sharpness": {"n": 16, "m": 8, "steps": 2, "rho": [0.01, 0.02]}}
    ck = ckpts / "sgd" / "epoch_0001.pt"
    s = analyze(ck, "hessian,sharpness", out=tmp_path / "res", options=opts, threads=1, progress=False)
    assert s.ok and len(s.done) == 2, s.failed
    model = load_checkpoint(ck).model
    data = get_dataset("synthetic", "train", **DATA["dataset_kwargs"]).subset(16)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        direct = {
            "hessian": hessian_spectrum(model, data, **HessianOptions.from_dict(opts["hessian"]).to_dict()),
            "sharpness": sharpness(model, data, **SharpnessOptions.from_dict(opts["sharpness"]).to_dict()),
        }
    finally:
        torch.set_num_threads(before)
    for rec in s.done:
        got, want = results.read_result(Path(rec["result"])), direct[rec["analysis"]]
        assert set(got.data_vars) == set(want.data_vars)
        for k in want.data_vars:
            assert got[k].values[0, 0].tobytes() == np.asarray(want[k].values, dtype=got[k].dtype).tobytes(), k
        assert json.loads(got.attrs["config_json"]) == json.loads(
            {"hessian": HessianOptions, "sharpness": SharpnessOptions}[rec["analysis"]].from_dict(opts[rec["analysis"]]).to_json())


# ---------------------------------------------------------------- data and options


def test_data_options_override_and_foreign_config(tmp_path):
    _save(tmp_path / "ck" / "r" / "epoch_0001.pt", seed=0, step=1, config={})
    out = tmp_path / "res"
    s = analyze(tmp_path / "ck", "t_loss_stats,norm_params", out=out, progress=False)
    assert [r["analysis"] for r in s.done] == ["norm_params"]  # needs no data
    assert "set data.dataset" in s.failed[0]["error"]
    data = {"dataset": "synthetic", "split": "test", "n": 10, "dataset_kwargs": {"num_samples": 12, "input_shape": [4], "num_classes": 3}}
    s = analyze(tmp_path / "ck", "t_loss_stats", out=out, options={"data": data}, progress=False)
    res = results.read_result(Path(s.done[0]["result"]))
    assert res["n"].item() == 10 and res.sizes["batch"] == 2
    assert json.loads(res.attrs["data_json"])["split"] == "test"


def test_data_options_resolve():
    cfg = {"dataset": "mnist1d", "dataset_kwargs": {"num_samples": 100}, "data_root": "/d"}
    assert DataOptions().resolve(cfg) == {"dataset": "mnist1d", "dataset_kwargs": {"num_samples": 100},
                                          "data_root": "/d", "split": "train", "n": None}
    assert DataOptions(dataset="synthetic").resolve(cfg)["dataset_kwargs"] == {}
    assert DataOptions(dataset="mnist1d", n=5).resolve(cfg)["dataset_kwargs"] == {"num_samples": 100}
    with pytest.raises(ConfigError, match="DataOptions.n"):
        DataOptions(n=0)
    with pytest.raises(ConfigError, match="accepted: 'train', 'test'"):
        DataOptions(split="val")


def test_options_validated_strictly_before_any_work(tmp_path, ckpts):
    out = tmp_path / "res"
    with pytest.raises(ConfigError, match="unknown analysis 'norm_param' \\(did you mean 'norm_params'\\?\\)"):
        analyze(ckpts, "norm_param", out=out)
    with pytest.raises(ConfigError, match="unknown option 'norm_params.bin' .*did you mean 'bins'"):
        analyze(ckpts, "norm_params", out=out, options={"norm_params": {"bin": 3}})
    with pytest.raises(ConfigError, match="unknown options table 'norm_parms'.*did you mean 'norm_params'"):
        analyze(ckpts, "norm_params", out=out, options={"norm_parms": {}})
    with pytest.raises(ConfigError, match="unknown option 'data.splt'"):
        analyze(ckpts, "norm_params", out=out, options={"data": {"splt": "test"}})
    assert not out.exists()


# ---------------------------------------------------------------- CLI


def test_cli_analyze_with_toml_and_exit_codes(tmp_path, ckpts, capsys):
    cfg = tmp_path / "opts.toml"
    cfg.write_text('[data]\nn = 16\n\n[norm_params]\nbins = 4\n\n[t_loss_stats]\nbatch_size = 4\n')
    out = tmp_path / "res"
    argv = ["analyze", str(ckpts / "sgd"), "--analyses", "norm_params,t_loss_stats", "--out", str(out), "--config", str(cfg)]
    assert main(argv) == 0
    assert "6 done, 0 skipped, 0 failed" in capsys.readouterr().out
    ds = results.open_results(out, "t_loss_stats")
    assert ds.sizes["batch"] == 4  # 16 examples in batches of 4
    assert results.open_results(out, "norm_params").sizes["bin"] == 4
    assert main(argv) == 0 and "0 done, 6 skipped" in capsys.readouterr().out
    assert main(argv + ["--no-skip-existing", "--set", "norm_params.bins=4", "--analyses", "norm_params"]) == 0
    assert "3 done, 0 skipped" in capsys.readouterr().out
    (ckpts / "sgd" / "broken.pt").write_bytes(b"\x00" * 10)
    assert main(argv) == 1
    assert "FAILED" in capsys.readouterr().err


def test_cli_errors(tmp_path, ckpts, capsys):
    base = ["analyze", str(ckpts), "--out", str(tmp_path / "res")]
    with pytest.raises(SystemExit) as e:
        main(base + ["--analyses", "hessain"])
    assert e.value.code == 2 and "did you mean 'hessian'" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[norm_params]\nbinz = 3\n")
    with pytest.raises(SystemExit) as e:
        main(base + ["--analyses", "norm_params", "--config", str(bad)])
    assert e.value.code == 2 and "did you mean 'bins'" in capsys.readouterr().err
    bad.write_text("bins = 3\n")
    with pytest.raises(SystemExit):
        main(base + ["--analyses", "norm_params", "--config", str(bad)])
    assert "must be a table" in capsys.readouterr().err
    for extra in (["--workers", "0"], ["--workers", "2", "--slurm", "partition=gpu"]):
        with pytest.raises(SystemExit) as e:
            main(base + ["--analyses", "norm_params", *extra])
        assert e.value.code == 2
    with pytest.raises(SystemExit):
        main(base + ["--analyses", "norm_params", "--slurm", "partiton=gpu"])
    assert "did you mean 'partition'" in capsys.readouterr().err


def test_slurm_and_set_parsing():
    assert parse_slurm("partition=gpu,gpus=1,time=2:00:00,cpus=8,mem=32G,array_parallelism=10") == {
        "slurm_partition": "gpu", "gpus_per_node": 1, "timeout_min": 120, "cpus_per_task": 8,
        "mem_gb": 32.0, "slurm_array_parallelism": 10}
    assert parse_slurm("mem=512M")["mem_gb"] == 0.5
    assert (parse_minutes("45"), parse_minutes("10:30"), parse_minutes("1-02:00:00")) == (45, 11, 1560)
    with pytest.raises(ConfigError, match="integer"):
        parse_slurm("gpus=one")
    with pytest.raises(ConfigError, match="key=value"):
        parse_slurm("partition")
    assert parse_set(["data.split=test", "x.rho=[0.1, 1]", "x.flag=true"]) == {
        "data": {"split": "test"}, "x": {"rho": [0.1, 1], "flag": True}}
    with pytest.raises(ConfigError, match="TABLE.OPTION=VALUE"):
        parse_set(["top_k=3"])


def test_slurm_executor_is_configured(tmp_path):
    pytest.importorskip("submitit")
    from landscape.cli_analyze import slurm_executor

    ex = slurm_executor("cluster=local,time=5,cpus=2", tmp_path)
    assert type(ex).__name__ == "AutoExecutor" and ex.cluster == "local"


def test_requeue_resubmits_the_same_task():
    submitit = pytest.importorskip("submitit")
    task = {"checkpoint": "a.pt", "analysis": "norm_params"}
    delayed = RunTask().checkpoint(task)
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    assert isinstance(delayed.function, RunTask) and delayed.args == (task,)


def test_worker_registry_follows_the_drivers_entry():
    register_analysis("t_swap", norm_params, "landscape.analyses.norm_params:NormParamsOptions")
    try:
        spec = {"fn": "test_batch:loss_stats", "options_cls": "test_batch:LossStatsOptions",
                "needs_data": True, "extra_inputs": None}
        ensure_registered("t_swap", spec)  # the driver had re-registered it: the worker follows
        assert get_analysis("t_swap").fn is loss_stats and entry_spec("t_swap") == spec
        with pytest.raises(ConfigError, match="cannot be imported by name"):
            ensure_registered("t_swap", {**spec, "fn": None})
    finally:
        unregister_analysis("t_swap")
    register_analysis("t_lambda", lambda m, d: None, LossStatsOptions)
    try:
        assert entry_spec("t_lambda")["fn"] is None
        ensure_registered("t_lambda", entry_spec("t_lambda"))  # same process: nothing to do
    finally:
        unregister_analysis("t_lambda")


# ---------------------------------------------------------------- your own model and data (issue 9)

USER_MODULE = """
import torch
from torch import nn
from landscape.data import ArrayDataset


class Net(nn.Module):
    def __init__(self, width=5):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, 3))

    def forward(self, x):
        return self.body(x)


def make_net(width=5):
    return Net(width)


def broken_net(width=5):
    raise RuntimeError("factory exploded")


def make_data(split="train", n=20):
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    return ArrayDataset(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g), 3)
"""


@pytest.fixture
def foreign(tmp_path):
    """A user module beside a folder of plain-PyTorch checkpoints ({"model_state_dict", ...})."""
    name = f"usernets_{tmp_path.name}"
    root = tmp_path / "ck"
    (root / "run").mkdir(parents=True)
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    sys.path.insert(0, str(tmp_path))
    try:
        mod = __import__(name)
    finally:
        sys.path.remove(str(tmp_path))
    for epoch in range(2):
        torch.manual_seed(epoch)
        net = mod.make_net(width=6)
        torch.save({"model_state_dict": net.state_dict(), "epoch": epoch}, root / "run" / f"epoch_{epoch}.pt")
    return {"root": root, "module": name, "mod": mod}


def test_foreign_checkpoints_with_model_and_data_import_paths(tmp_path, foreign):
    out, name = tmp_path / "res", foreign["module"]
    s = analyze(foreign["root"], "norm_params,t_loss_stats", out=out, model=f"{name}:make_net",
                model_kwargs={"width": 6}, data=f"{name}:make_data", data_kwargs={"n": 12}, progress=False)
    assert s.ok and len(s.done) == 4, s.failed
    for rec in s.done:
        ck = torch.load(rec["checkpoint"], weights_only=True)
        net = foreign["mod"].make_net(width=6)
        net.load_state_dict(ck["model_state_dict"])
        net.eval()
        got = results.read_result(rec["result"])
        if rec["analysis"] == "norm_params":
            assert got["mean"].values[0, 0].tobytes() == norm_params(net)["mean"].values.tobytes()
        else:
            want = loss_stats(net, foreign["mod"].make_data("train", n=12))
            assert got["loss"].values[0, 0].tobytes() == want["loss"].values.tobytes()
            assert json.loads(got.attrs["data_json"])["dataset"] == f"{name}:make_data"
    # Without the model the files cannot be loaded, and the error says how to give it.
    s = analyze(foreign["root"], "norm_params", out=tmp_path / "res2", progress=False)
    assert len(s.failed) == 2 and all("--model pkg.module:factory" in r["error"] for r in s.failed)
    # The model spec is part of the options hash: another width is another result.
    s2 = analyze(foreign["root"], "norm_params", out=out, model=f"{name}:make_net", model_kwargs={"width": 7},
                 progress=False)
    assert len(s2.failed) == 2 and "do not fit" in s2.failed[0]["error"]


def test_foreign_checkpoints_in_spawned_workers_find_the_user_module(tmp_path, foreign):
    # The module lies beside the analysed folder, not on sys.path: the workers find it by the
    # search paths the tasks carry.
    s = analyze(foreign["root"], "norm_params", out=tmp_path / "res", model=f"{foreign['module']}:make_net",
                model_kwargs={"width": 6}, workers=2, progress=False)
    assert s.ok and len(s.done) == 2, s.failed


def test_model_and_data_objects_run_serially_and_are_refused_for_workers(tmp_path, foreign):
    mod = foreign["mod"]
    s = analyze(foreign["root"], "t_loss_stats", out=tmp_path / "res", model=lambda: mod.make_net(6),
                data=mod.make_data("train", n=8), progress=False)
    assert s.ok and len(s.done) == 2, s.failed
    from landscape.specs import SpecError

    with pytest.raises(SpecError, match="lambda"):
        analyze(foreign["root"], "norm_params", out=tmp_path / "res", model=lambda: mod.make_net(6), workers=2)


def test_model_table_in_options(tmp_path, foreign):
    opts = {"model": {"spec": f"{foreign['module']}:make_net", "kwargs": {"width": 6}}}
    s = analyze(foreign["root"], "norm_params", out=tmp_path / "res", options=opts, progress=False)
    assert s.ok and len(s.done) == 2
    with pytest.raises(ConfigError, match="unknown option 'model.spc'"):
        analyze(foreign["root"], "norm_params", out=tmp_path / "res", options={"model": {"spc": "x"}})


def test_bad_model_data_and_option_conflicts_fail_before_any_task(tmp_path, foreign, capsys):
    name, root, out = foreign["module"], foreign["root"], tmp_path / "res"
    base = ["analyze", str(root), "-a", "norm_params", "--out", str(out)]
    cases = [
        (["--model", f"{name}:make_net", "--model-kwargs", "width=abc"], "model factory .*make_net.*width.*abc"),
        (["--model", f"{name}:broken_net"], "factory exploded"),
        (["--model", f"{name}:no_such"], "has no attribute 'no_such'"),
        (["--model", "nosuchmodule_xyz:f"], "no module named 'nosuchmodule_xyz'"),
        (["--model", f"{name}:make_net", "--model-kwargs", "width"], "must be NAME=VALUE"),
        (["-a", "t_loss_stats", "--set", "data.dataset=\"mnist_1d\""], "unknown data.dataset 'mnist_1d'.*accepted: .*mnist1d"),
        (["-a", "t_loss_stats", "--data", f"{name}:no_data"], "has no attribute 'no_data'"),
        (["-a", "t_needs", "--set", "data.n=32"], "t_needs needs 64 examples but data.n=32"),
        (["-a", "sharpness", "--set", "data.n=256"], "sharpness needs 1024 examples but data.n=256"),
        (["-a", "sharpness", "--model", f"{name}:make_net", "--data", f"{name}:make_data"],
         "sharpness needs 1024 examples but data set .*make_data.* holds 20"),
        (["--wrokers", "2"], "unrecognized option.*--wrokers \\(did you mean '--workers'\\?\\)"),
        (["--work", "2"], "unrecognized option.*--work"),
    ]
    for extra, pattern in cases:
        with pytest.raises(SystemExit) as e:
            main(base + extra)
        err = capsys.readouterr().err
        assert e.value.code == 2, (extra, err)
        assert re.search(pattern, err), (extra, err)
        assert "Traceback" not in err
    assert not out.exists()  # nothing ran, nothing was written
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as e:
        main(["analyze", str(empty), "-a", "norm_params", "--out", str(out)])
    assert e.value.code == 2 and "no checkpoints" in capsys.readouterr().err


def test_cli_model_data_flags(tmp_path, foreign, capsys):
    name = foreign["module"]
    argv = ["analyze", str(foreign["root"]), "-a", "norm_params,t_loss_stats", "--out", str(tmp_path / "res"),
            "--model", f"{name}:make_net", "--model-kwargs", "width=6", "--data", f"{name}:make_data",
            "--data-kwargs", "n=8", "--set", "t_loss_stats.batch_size=4"]
    assert main(argv) == 0, capsys.readouterr().err
    assert "4 done, 0 skipped, 0 failed" in capsys.readouterr().out
    assert results.open_results(tmp_path / "res", "t_loss_stats").sizes["batch"] == 2


def test_cli_set_scalar_rho(tmp_path, ckpts, capsys):
    # --set sharpness.rho=0.01 is a scalar; the CLI passes it and SharpnessOptions takes it.
    out = tmp_path / "res"
    argv = ["analyze", str(ckpts / "sgd" / "epoch_0000.pt"), "-a", "sharpness", "--out", str(out),
            "--set", "sharpness.rho=0.01", "--set", "sharpness.n=16", "--set", "sharpness.m=8",
            "--set", "sharpness.steps=1", "--set", "data.n=16"]
    assert main(argv) == 0, capsys.readouterr().err
    ds = results.open_results(out, "sharpness")
    assert ds["rho"].values.tolist() == [0.01] and float(ds["sharpness_mean"].squeeze()) == float(ds["sharpness_mean"].squeeze())


def test_parse_kwargs():
    from landscape.cli_analyze import parse_kwargs

    assert parse_kwargs("a=1,b=[1, 2],c={x = 1},d=hi,e=\"q,r\",f=true") == {
        "a": 1, "b": [1, 2], "c": {"x": 1}, "d": "hi", "e": "q,r", "f": True}
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        parse_kwargs("=3")


def test_summary_str():
    s = Summary(out=Path("r"))
    s.add({"status": "done"})
    s.add({"status": "failed"})
    assert str(s).startswith("1 done, 0 skipped, 1 failed") and not s.ok


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
