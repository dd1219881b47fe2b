"""The research scripts analyses/sam_on.py and analyses/feature_rank.py run end to end in --quick
mode, as `python analyses/NAME.py`, print their table and write their figures and results.

Both share one output folder, as they share runs in real use: SGD and SAM are trained by the
first and reused by the second.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
QUICK = "mnist1d-resnet1d-quick"
SCRIPTS = {  # script -> (its optimizers, some of the table's columns, its figures)
    "sam_on": (["sgd", "sam", "sam-on"], ["test_acc", "sharp@0.005", "norm-only@0.005", "mean gamma", "mean beta"],
               ["sharpness_vs_accuracy", "sharpness_vs_rho", "gamma_beta", "summary"]),
    "feature_rank": (["sgd", "sam", "msam"], ["test_acc", "rank B1", "rank B2", "rank B3", "rank penultimate"],
                     ["rank_vs_epoch", "summary"]),
}


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("analyses_on")


def _run(script: str, out: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # runs.py finds the repository itself
    env.update(OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    return subprocess.run([sys.executable, str(REPO / "analyses" / f"{script}.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, cwd=out, env=env, timeout=600)


def _table(stdout: str, script: str, n_rows: int) -> tuple[list[str], list[list[str]]]:
    lines = stdout.splitlines()
    title = next(i for i, line in enumerate(lines) if line.startswith(f"{script}: {QUICK}"))
    header = [c for c in lines[title + 1].split("  ") if c.strip()]
    rows = [lines[title + 2 + i].split() for i in range(n_rows)]
    return [c.strip() for c in header], rows


# sam_on runs in `make test`; feature_rank (~15 s on a 2-core box) in `make test-all`, so
# `make test` stays under its 10 minutes.
@pytest.mark.parametrize("script", [s if s == "sam_on" else pytest.param(s, marks=pytest.mark.slow)
                                    for s in SCRIPTS])
def test_script_quick(script: str, out: Path) -> None:
    optimizers, columns, figures = SCRIPTS[script]
    done = _run(script, out)
    assert done.returncode == 0, done.stderr[-3000:]
    header, rows = _table(done.stdout, script, len(optimizers))
    assert header[0] == "run" and all(c in header for c in columns), header
    assert [r[0] for r in rows] == optimizers
    for r in rows:  # one seed in --quick: a finite number per cell
        assert all(float(v) == float(v) for v in r[1:]), r
    folder = out / "figures" / script / QUICK
    for name in figures:
        for ext in ("png", "pdf"):
            assert (folder / f"{name}.{ext}").stat().st_size > 1000, f"{name}.{ext}"
    assert list((out / "results" / script / QUICK).rglob("*.nc")), "no results in the store"


def test_sam_on_stores_both_sharpness_option_sets(out: Path) -> None:
    """All-parameter and norm-only sharpness are two option sets beside each other in one store,
    and the norm-only perturbation raises the loss less (a subset of the same ball)."""
    import xarray as xr

    from landscape.results import find_results, open_results

    if not (out / "results" / "sam_on").exists():
        assert _run("sam_on", out).returncode == 0
    store = out / "results" / "sam_on" / QUICK
    groups = find_results(store, "sharpness")
    assert len(groups) == 2
    by_params = {}
    for h in groups:
        ds = open_results(store, "sharpness", options_hash=h)
        by_params[json.loads(ds.attrs["config_json"])["params"]] = ds
    assert set(by_params) == {"all", "norm"}
    diff = by_params["all"].sharpness_mean - by_params["norm"].sharpness_mean
    assert isinstance(diff, xr.DataArray) and bool((diff > -1e-3).all())


@pytest.mark.slow
def test_feature_rank_every_epoch(out: Path) -> None:
    """feature_rank.py analyses every epoch's checkpoint of every run."""
    if not (out / "results" / "feature_rank").exists():
        assert _run("feature_rank", out).returncode == 0
    store = out / "results" / "feature_rank" / QUICK
    for run in ("sgd-seed0", "sam-seed0", "msam-seed0"):
        assert sorted(p.name for p in (store / run).iterdir()) == ["epoch_0001", "epoch_0002"]
