"""Batch runs and the results store under faults (issue 10): full disks, read-only folders,
concurrent runs, dead workers, killed drivers. Kills are SIGKILLs of real processes; the full
disk is a real 200 KB tmpfs where the test may mount one, else an injected ENOSPC."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from landscape import results
from landscape.analyses.norm_params import norm_params
from landscape.analyses.registry import register_analysis, unregister_analysis
from landscape.batch import analyze, run_task, write_summary
from landscape.checkpoint import save_checkpoint
from landscape.cli_analyze import main
from landscape.config import ConfigError, Options
from landscape.locks import ResultLock, lock_path
from landscape.models import build_model
from landscape.pool import death_cause

DATA = {"dataset": "synthetic", "dataset_kwargs": {"num_samples": 24, "input_shape": [4], "num_classes": 3, "seed": 1}}
TESTS_DIR = str(Path(__file__).parent)
REPO = str(Path(__file__).parent.parent)


# ---------------------------------------------------------------- analyses used here (module level:
# spawned workers and the driver subprocesses import them as "test_faults:...")


@dataclass(frozen=True)
class MarkOptions(Options):
    marker_dir: str = ""
    sleep: float = 0.0
    fail_first: int = 0


def _mark(marker_dir: str, model) -> int:
    """Record one computation (which checkpoint, which process); returns how many came before."""
    key = f"{float(sum(p.detach().double().sum() for p in model.parameters())):.10e}"
    before = len([f for f in os.listdir(marker_dir) if f.startswith(key)])
    Path(marker_dir, f"{key}.{os.getpid()}.{time.time_ns()}").touch()
    return before


def marked(model, data, *, marker_dir, sleep, fail_first):
    """norm_params, after leaving a marker and sleeping (a slow analysis whose computations
    can be counted); the first ``fail_first`` computations of a checkpoint raise MemoryError."""
    before = _mark(marker_dir, model) if marker_dir else 0
    time.sleep(sleep)
    if before < fail_first:
        raise MemoryError("simulated out of memory")
    return norm_params(model)


def segfaulting(model, data, *, marker_dir, sleep, fail_first):
    _mark(marker_dir, model)
    os.kill(os.getpid(), signal.SIGSEGV)


def sigkilled(model, data, *, marker_dir, sleep, fail_first):
    _mark(marker_dir, model)
    os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class SleepyOptions(Options):
    pid_dir: str = ""


def sleepy(model, data, *, pid_dir):
    """Announces its worker's pid, then works for a minute (long enough to kill its driver)."""
    Path(pid_dir, str(os.getpid())).touch()
    time.sleep(60)
    return norm_params(model)


TEST_ANALYSES = {"t_marked": (marked, MarkOptions), "t_segv": (segfaulting, MarkOptions),
                 "t_sigkill": (sigkilled, MarkOptions), "t_sleepy": (sleepy, SleepyOptions)}


def register_test_analyses() -> None:
    """For this module's tests and its driver subprocesses only (registry-wide tests elsewhere
    must not see them); spawned workers get them from the tasks' entry specs."""
    for name, (fn, opts) in TEST_ANALYSES.items():
        register_analysis(name, fn, opts, needs_data=False, replace=True)


@pytest.fixture(scope="module", autouse=True)
def _test_analyses():
    register_test_analyses()
    yield
    for name in TEST_ANALYSES:
        unregister_analysis(name)


# ---------------------------------------------------------------- helpers


def _save(path, seed, step):
    torch.manual_seed(seed)
    m = build_model("mlp", input_shape=(4,), num_classes=3, width=6, depth=2, norm="batch")
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    return save_checkpoint(path, m, step=step, epoch=step, metrics={}, config=DATA)


@pytest.fixture
def ckpts(tmp_path):
    for i in range(4):
        _save(tmp_path / "ck" / "run" / f"epoch_{i:04d}.pt", seed=i, step=i)
    return tmp_path / "ck"


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REPO, TESTS_DIR, env.get("PYTHONPATH", "")])
    return env


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")  # a zombie is dead
    except FileNotFoundError:
        return False


def _mount_tmpfs(path: Path, size: str, *options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    opts = ",".join((f"size={size}", *options))
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A 200 KB file system (tmpfs), or skip where this test may not mount one."""
    path = tmp_path / "small"
    if not _mount_tmpfs(path, "200k"):
        pytest.skip("cannot mount a tmpfs here (needs root); the injected-ENOSPC test covers the logic")
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)


# ---------------------------------------------------------------- item 1: full disk


def test_full_disk_injected_names_the_disk_and_writes_the_summary(tmp_path, ckpts, monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results, "atomic_write", full)
    s = analyze(ckpts, "norm_params", out=tmp_path / "res", progress=False)
    assert len(s.failed) == 4 and not s.done
    for rec in s.failed:
        assert rec["cause"] == "disk full"
        assert rec["error"].startswith("disk full: the file system at /") and "bytes free" in rec["error"]
        assert rec["result"] in rec["error"]
    disk = json.loads((tmp_path / "res" / "summary.json").read_text())
    assert disk["counts"]["failed"] == 4 and {r["cause"] for r in disk["failed"]} == {"disk full"}


@pytest.mark.parametrize("exc, cause, text", [
    (PermissionError(errno.EACCES, "Permission denied"), "permission", "permission denied: cannot write"),
    (OSError(errno.EROFS, "Read-only file system"), "permission", "permission denied: cannot write"),
    (MemoryError("no room"), "memory", "MemoryError: no room"),
])
def test_write_failures_name_their_cause(tmp_path, ckpts, monkeypatch, exc, cause, text):
    def fail(*a, **k):
        raise exc

    monkeypatch.setattr(results, "atomic_write", fail)
    s = analyze(ckpts / "run" / "epoch_0000.pt", "norm_params", out=tmp_path / "res", progress=False)
    assert [r["cause"] for r in s.failed] == [cause] and text in s.failed[0]["error"]
    disk = json.loads((tmp_path / "res" / "summary.json").read_text())
    assert disk["failed"][0]["cause"] == cause


@pytest.mark.parametrize("workers", [None, 2])
def test_full_disk_real_tmpfs(small_disk, ckpts, workers):
    # 4 checkpoints x 3 analyses of ~30-60 KB each do not fit in 200 KB: some results are written,
    # the rest fail as "disk full" naming the disk; no crash, no partial file, a summary anyway.
    s = analyze(ckpts, "norm_params,t_marked", out=small_disk, options={"t_marked": {}}, workers=workers,
                progress=False)
    assert s.failed, "the disk did not fill up; make the test's files bigger"
    assert all(r["cause"] == "disk full" and str(small_disk) in r["error"] for r in s.failed), s.failed
    assert not any("BrokenProcessPool" in r["error"] for r in s.failed)
    for rec in s.done:
        assert results.read_result(rec["result"]).sizes["layer"] == 2
    assert not [p for p in small_disk.rglob("*.tmp")]
    assert not s.write_error, s.write_error
    disk = json.loads((small_disk / "summary.json").read_text())
    assert disk["counts"] == s.counts()


def test_summary_write_failure_is_reported_not_raised(tmp_path, ckpts, monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    s = analyze(ckpts / "run" / "epoch_0000.pt", "norm_params", out=tmp_path / "res", progress=False)
    monkeypatch.setattr(results, "write_json", full)
    assert write_summary(s) is None
    assert s.write_error.startswith(f"could not write {tmp_path / 'res' / 'summary.json'} (the file system at")
    assert not s.ok


# ---------------------------------------------------------------- item 8: read-only out


def test_read_only_out_fails_early_with_exit_2(tmp_path, ckpts, capsys):
    out = tmp_path / "ro"
    if not _mount_tmpfs(out, "1m", "ro"):
        if os.geteuid() == 0:
            pytest.skip("root without mount: cannot make a read-only folder")
        out.chmod(0o555)
    markers = tmp_path / "markers"
    markers.mkdir()
    try:
        with pytest.raises(SystemExit) as e:
            main(["analyze", str(ckpts), "-a", "t_marked", "--out", str(out), "--set", f"t_marked.marker_dir=\"{markers}\""])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert f"results folder {out} is not writable" in err and "Traceback" not in err
        assert not os.listdir(markers)  # nothing was computed
    finally:
        subprocess.run(["umount", "-l", str(out)], check=False, capture_output=True)


# ---------------------------------------------------------------- item 9 (analyze side)


def test_string_for_a_float_option_is_a_config_error_before_any_task(tmp_path, ckpts, capsys):
    with pytest.raises(ConfigError, match="hessian"):
        analyze(ckpts, "hessian", out=tmp_path / "res", options={"hessian": {"tol": "0.1"}}, progress=False)
    assert not (tmp_path / "res").exists()
    with pytest.raises(SystemExit) as e:
        main(["analyze", str(ckpts), "-a", "hessian", "--out", str(tmp_path / "res"), "--set", 'hessian.tol="0.1"'])
    assert e.value.code == 2 and "tol" in capsys.readouterr().err


# ---------------------------------------------------------------- item 2: concurrent runs, locks


def test_lock_is_exclusive_and_released_by_the_death_of_its_holder(tmp_path):
    target = tmp_path / "r" / "hessian-0123456789.nc"
    code = textwrap.dedent(f"""
        import sys, time
        from landscape.locks import ResultLock
        lock = ResultLock({str(target)!r})
        assert lock.acquire()
        print("locked", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=_subprocess_env())
    try:
        assert proc.stdout.readline().strip() == "locked"
        mine = ResultLock(target)
        assert not mine.acquire()
        assert mine.holder["pid"] == proc.pid and str(proc.pid) in mine.describe_holder()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert mine.acquire(wait=5)  # the kernel released the dead holder's lock: never stale
        assert lock_path(target).exists()
        mine.release()
        assert not lock_path(target).exists()
    finally:
        proc.kill()
        proc.wait()


def test_locked_result_is_skipped_and_named(tmp_path, ckpts):
    out = tmp_path / "res"
    s = analyze(ckpts / "run" / "epoch_0000.pt", "norm_params", out=out, progress=False)
    task_result = s.done[0]["result"]
    Path(task_result).unlink()
    from landscape.batch import Task

    task = Task(checkpoint=s.done[0]["checkpoint"], run="run", analysis="norm_params", result=task_result,
                hash=Path(task_result).stem.split("-")[1])
    with ResultLock(task_result):
        rec = run_task(task)
    assert rec["status"] == "skipped" and "being computed by process" in rec["note"]
    assert rec["locked_by"]["pid"] == os.getpid()
    assert run_task(task)["status"] == "done"


def test_summary_is_merged_with_earlier_runs(tmp_path, ckpts):
    out = tmp_path / "res"
    analyze(ckpts / "run" / "epoch_0000.pt", "norm_params", out=out, progress=False)
    analyze(ckpts / "run" / "epoch_0001.pt", "norm_params", out=out, progress=False)
    s3 = analyze(ckpts / "run" / "epoch_0000.pt", "norm_params", out=out, progress=False)
    assert len(s3.skipped) == 1
    disk = json.loads((out / "summary.json").read_text())
    assert disk["counts"] == {"done": 2, "skipped": 0, "failed": 0}  # "skipped" never hides "done"
    assert disk["last_run"]["counts"] == {"done": 0, "skipped": 1, "failed": 0}
    (out / "summary.json").write_text("{broken")
    analyze(ckpts / "run" / "epoch_0002.pt", "norm_params", out=out, progress=False)
    disk = json.loads((out / "summary.json").read_text())
    assert disk["counts"]["done"] == 1 and "could not be read" in disk["note"]


@pytest.mark.slow
def test_two_analyze_processes_on_one_out(tmp_path, ckpts):
    # Two real drivers started together on one --out: every result is computed exactly once,
    # neither fails (no FileNotFoundError of a removed temp file), summary.json holds both.
    out, markers = tmp_path / "res", tmp_path / "markers"
    markers.mkdir()
    for i in range(4, 8):
        _save(ckpts / "run" / f"epoch_{i:04d}.pt", seed=i, step=i)
    argv = [sys.executable, "-m", "landscape.cli_analyze", "analyze", str(ckpts), "-a", "t_marked", "--out", str(out),
            "--set", f't_marked.marker_dir="{markers}"', "--set", "t_marked.sleep=0.7"]
    code = ("import sys, test_faults; test_faults.register_test_analyses(); "
            "from landscape.cli_analyze import main; sys.exit(main(sys.argv[1:]))")
    argv[1:3] = ["-c", code]
    procs = [subprocess.Popen(argv, env=_subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, (o, e)
        assert "0 failed" in o
    keys = [f.split(".")[0] + "." + f.split(".")[1] for f in os.listdir(markers)]
    assert len(keys) == 8 and len(set(keys)) == 8, sorted(os.listdir(markers))  # each once
    assert len({f.split(".")[2] for f in os.listdir(markers)}) == 2  # both processes did work
    disk = json.loads((out / "summary.json").read_text())
    assert disk["counts"] == {"done": 8, "skipped": 0, "failed": 0}
    assert len(list(out.rglob("*.nc"))) == 8 and not list(out.rglob("*.tmp")) and not list(out.rglob("*.lock"))


# ---------------------------------------------------------------- item 6: a dead worker fails alone


def test_death_causes():
    assert death_cause(-signal.SIGKILL)[0] == "killed" and "out-of-memory" in death_cause(-9)[1]
    assert death_cause(-signal.SIGSEGV)[0] == "segfault"
    assert death_cause(-signal.SIGABRT) == ("crash", "worker ended by SIGABRT")
    assert death_cause(1) == ("crash", "worker exited with status 1")


@pytest.mark.slow
def test_dying_workers_fail_only_their_own_tasks(tmp_path, ckpts):
    # One checkpoint, four analyses in 2 workers: a segfault and a SIGKILL on every attempt
    # (failed alone after one retry each, with their cause), a MemoryError on the first attempt
    # only (retried in a fresh worker: done) and a healthy analysis, which is not affected.
    markers = tmp_path / "markers"
    markers.mkdir()
    one = ckpts / "run" / "epoch_0000.pt"
    opts = {name: {"marker_dir": str(markers / name)} for name in ("t_segv", "t_sigkill", "t_marked")}
    for name in opts:
        (markers / name).mkdir()
    opts["t_marked"]["fail_first"] = 1
    s = analyze(one, "t_segv,t_sigkill,t_marked,norm_params", out=tmp_path / "res", options=opts, workers=2,
                progress=False)
    by = {r["analysis"]: r for r in (*s.done, *s.failed)}
    assert by["t_segv"]["cause"] == "segfault" and by["t_segv"]["attempts"] == 2
    assert by["t_sigkill"]["cause"] == "killed" and "SIGKILL" in by["t_sigkill"]["error"]
    assert by["t_marked"]["status"] == "done" and by["t_marked"]["attempts"] == 2
    assert by["norm_params"]["status"] == "done" and len(s.failed) == 2
    assert len(os.listdir(markers / "t_segv")) == 2 and len(os.listdir(markers / "t_sigkill")) == 2
    disk = json.loads((tmp_path / "res" / "summary.json").read_text())
    assert {r["cause"] for r in disk["failed"]} == {"segfault", "killed"}


def test_memory_error_is_named_in_serial_runs(tmp_path, ckpts):
    markers = tmp_path / "m"
    markers.mkdir()
    s = analyze(ckpts / "run" / "epoch_0000.pt", "t_marked", out=tmp_path / "res", progress=False,
                options={"t_marked": {"marker_dir": str(markers), "fail_first": 1}})
    assert s.failed[0]["cause"] == "memory" and "MemoryError: simulated" in s.failed[0]["error"]


# ---------------------------------------------------------------- item 5: killing the driver


@pytest.mark.slow
def test_killing_the_driver_takes_its_workers_with_it(tmp_path, ckpts):
    pids = tmp_path / "pids"
    pids.mkdir()
    code = textwrap.dedent(f"""
        import test_faults
        from landscape.batch import analyze
        if __name__ == "__main__":
            test_faults.register_test_analyses()
            analyze({str(ckpts)!r}, "t_sleepy", out={str(tmp_path / "res")!r}, workers=2,
                    options={{"t_sleepy": {{"pid_dir": {str(pids)!r}}}}}, progress=False)
    """)
    script = tmp_path / "driver.py"
    script.write_text(code)
    driver = subprocess.Popen([sys.executable, str(script)], env=_subprocess_env())
    try:
        deadline = time.monotonic() + 120
        while len(os.listdir(pids)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = [int(p) for p in os.listdir(pids)]
        assert len(workers) == 2 and all(_alive(p) for p in workers)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in workers), "workers outlived their driver"
    finally:
        driver.kill()
        for p in os.listdir(pids):
            try:
                os.kill(int(p), signal.SIGKILL)
            except ProcessLookupError:
                pass


# ---------------------------------------------------------------- item 3: result names


def test_runs_and_files_that_sanitize_alike_get_their_own_results(tmp_path):
    root = tmp_path / "ck"
    names = [("greek/sam-α", "epoch_0001.pt"), ("greek/sam-β", "epoch_0001.pt"), ("greek/sam-β", "epoch 1.pt"),
             ("greek/sam-β", "epoch_1.pt"), ("greek/sam-β", "e.pt"), ("greek/sam-β", "e.pth"), ("a b", "x.pt")]
    for i, (run, name) in enumerate(names):
        _save(root / run / name, seed=i, step=i)
    out = tmp_path / "res"
    s = analyze(root, "norm_params", out=out, progress=False)
    assert s.ok and len(s.done) == len(names), s.failed
    files = sorted(out.rglob("*.nc"))
    assert len(files) == len(names) and len({f.parent for f in files}) == len(names)
    assert all(out in f.parents for f in files)
    s2 = analyze(root, "norm_params", out=out, progress=False)
    assert len(s2.skipped) == len(names) and not s2.done  # re-runs find every result
    ds = results.open_results(out, "norm_params")
    assert sorted(ds["run"].values.tolist()) == ["a b", "greek/sam-α", "greek/sam-β"]


# ---------------------------------------------------------------- item 11 (analyze side)


def test_fifo_and_dangling_link_are_reported_not_opened(tmp_path, ckpts):
    run = ckpts / "run"
    os.mkfifo(run / "pipe.pt")
    (run / "gone.pt").symlink_to(tmp_path / "nowhere.pt")
    out = tmp_path / "res"
    s = analyze(ckpts, "norm_params", out=out, progress=False)  # would hang forever on reading the FIFO
    assert s.ok and len(s.done) == 4
    reasons = {Path(r["path"]).name: r["reason"] for r in s.rejected}
    assert set(reasons) == {"pipe.pt", "gone.pt"} and "FIFO" in reasons["pipe.pt"].upper()
    disk = json.loads((out / "summary.json").read_text())
    assert {Path(r["path"]).name for r in disk["rejected"]} == {"pipe.pt", "gone.pt"}


def test_readme_reliability_section_names_existing_tests():
    import re

    text = (Path(REPO) / "README.md").read_text()
    section = text[text.index("## Reliability"):]
    section = section[: section.index("\n## ", 5)]
    cited = re.findall(r"`(test_\w+\.py)::(test_\w+)`", section)
    assert len(cited) >= 10
    for file, test in cited:
        assert f"def {test}(" in (Path(TESTS_DIR) / file).read_text(), f"README cites {file}::{test}, which does not exist"
