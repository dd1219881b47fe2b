"""The research scripts of analyses/ (sam_spectrum, landscape_slices, momentum_direction) run end
to end in --quick mode, as `python analyses/NAME.py`, print their table and write their figures.

The three share one output folder, as they share runs in real use: the first trains, the others
reuse its checkpoints (checked through the trainer's "already trained" log line). About 20 s of
CPU time per script.
"""

from __future__ import annotations

import doctest
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = {  # script -> (its optimizers, the table's columns, its figures)
    "sam_spectrum": (["sgd", "sam"], ["test_acc", "lambda_max", "lambda_1/lambda_5", "trace"],
                     ["density", "eigenvalues", "summary"]),
    "landscape_slices": (["sgd", "sam"], ["train_loss", "1d_rise@0.1", "1d_rise@0.5", "2d_rise@0.25"],
                         ["slice1d", "slice2d", "surface2d", "interpolation"]),
    "momentum_direction": (["sgd", "sam", "msam"], ["cos_last", "curv_mom", "curv_rand", "mom>rand", "rise(-mom)"],
                           ["over_training", "slice_momentum", "slice_random"]),
}


def _runs_module():
    if "runs" not in sys.modules:
        spec = importlib.util.spec_from_file_location("runs", REPO / "analyses" / "runs.py")
        sys.modules["runs"] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
        spec.loader.exec_module(sys.modules["runs"])
    return sys.modules["runs"]


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("analyses")


def _run(script: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # runs.py finds the repository itself
    env.update(OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    return subprocess.run([sys.executable, str(REPO / "analyses" / f"{script}.py"), "--quick", "--out", str(out),
                           *extra], capture_output=True, text=True, cwd=out, env=env, timeout=600)


# The first script runs in `make test` (it trains the shared quick runs); the others take ~15 s
# each on a 2-core box and run in `make test-all`, so `make test` stays under its 10 minutes.
@pytest.mark.parametrize("script", [s if i == 0 else pytest.param(s, marks=pytest.mark.slow)
                                    for i, s in enumerate(SCRIPTS)])
def test_script_quick(script: str, out: Path) -> None:
    optimizers, columns, figures = SCRIPTS[script]
    runs_dir = out / "checkpoints" / "mnist1d-resnet1d-quick"
    trained_before = [o for o in optimizers if (runs_dir / f"{o}-seed0" / "epoch_0002.pt").exists()]
    done = _run(script, out)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    title = next(i for i, line in enumerate(lines) if line.startswith(f"{script}: mnist1d-resnet1d-quick"))
    header = lines[title + 1].split()
    assert header[0] == "run" and all(c in header for c in columns), lines[title + 1]
    assert [line.split()[0] for line in lines[title + 2: title + 2 + len(optimizers)]] == optimizers
    folder = out / "figures" / script / "mnist1d-resnet1d-quick"
    for name in figures:
        for ext in ("png", "pdf"):
            assert (folder / f"{name}.{ext}").stat().st_size > 1000, f"{name}.{ext}"
    assert list((out / "results" / script).rglob("*.nc")), "no results in the store"
    for o in optimizers:  # every epoch saved
        assert (runs_dir / f"{o}-seed0" / "epoch_0001.pt").exists() and (runs_dir / f"{o}-seed0" / "epoch_0002.pt").exists()
    for o in trained_before:  # runs of an earlier script are reused, not trained again
        assert f"/{o}-seed0: already trained for 2 epochs" in done.stderr
        assert f" {o}-seed0 epoch 1/2" not in done.stderr  # the log line of a trained epoch


def test_bad_flags_are_refused_with_the_accepted_values(out: Path) -> None:
    done = _run("sam_spectrum", out, "--optimizers", "sgd,adam")
    assert done.returncode == 2
    assert "unknown ['adam']" in done.stderr and "sgd, sam, sam-on, msam" in done.stderr


def test_runs_helpers() -> None:
    runs = _runs_module()
    assert doctest.testmod(runs).failed == 0
    args = runs.parser("t").parse_args(["--seeds", "3", "--model-kwargs", "width=8", "--epochs", "4"])
    study = runs.Study.from_args(args, "t")
    assert study.seeds == [0, 1, 2] and study.epochs == 4
    cfg = study.config("sam-on", 2)
    assert cfg.seed == 2 and cfg.model_kwargs == {"width": 8} and cfg.sam.mask == "norm"
    assert cfg.out.endswith("checkpoints/mnist1d-resnet1d/sam-on-seed2") and cfg.save_every == 1
    assert runs.split_run("sam-on-seed12") == ("sam-on", 12)
    assert runs.mean_std([1.0, 2.0, 3.0]) == "2 +- 1"
    assert runs.parser("t").parse_args(["--seeds", "4,7"]).seeds == [4, 7]
