"""Speed-up of ``landscape.analyze`` with 2 local worker processes over 1 (target >= 1.6x on 2 cores).

Eight checkpoints (``resnet1d`` on synthetic MNIST-1D-shaped data, different seeds) x the
``hessian`` and ``sharpness`` analyses with small options = 16 tasks, run three ways:

* ``1 worker x 1 thread``: serially in this process (no pool start-up cost), the baseline;
* ``2 workers x 1 thread``: ``workers=2`` (spawned pool; its start-up is included);
* ``1 worker x 2 threads`` (``--two-threads``): serially with two torch threads, what one process
  gets from 2 cores.

The speed-up is ``time(1 worker) / time(2 workers)``. Results of the runs are compared
bitwise (same tasks, same thread count -> identical files). The machine load average is printed:
on a shared machine the numbers mean little when it exceeds the core count.

Usage:
    .venv/bin/python bench/bench_batch.py               # the benchmark (a few minutes on 2 cores)
    .venv/bin/python bench/bench_batch.py --quick       # tiny sizes, a smoke test
    .venv/bin/python bench/bench_batch.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from landscape import results
from landscape.batch import analyze
from landscape.checkpoint import save_checkpoint
from landscape.models import build_model

TARGET = 1.6


def make_checkpoints(folder: Path, n: int, width: int, num_samples: int) -> None:
    config = {"dataset": "synthetic",
              "dataset_kwargs": {"num_samples": num_samples, "input_shape": [40], "num_classes": 10, "seed": 0}}
    for i in range(n):
        torch.manual_seed(i)
        model = build_model("resnet1d", input_shape=(40,), num_classes=10, width=width)
        save_checkpoint(folder / "run" / f"epoch_{i:04d}.pt", model, step=100 * i, epoch=i, config=config)


def options(quick: bool) -> dict:
    n = 128 if quick else 256
    return {
        "data": {"n": n},
        "hessian": {"top_k": 3, "tol": 1e-2, "batch_size": 128, "trace_samples": 15 if quick else 30,
                    "slq_runs": 2, "slq_steps": 10 if quick else 20, "grid_points": 200},
        "sharpness": {"n": n, "m": 64 if quick else 128, "steps": 3 if quick else 10, "rho": [0.05]},
    }


def timed(ckpts: Path, out: Path, opts: dict, *, workers: int, threads: int) -> tuple[float, float]:
    """Wall time of the whole batch and the summed CPU time of its tasks."""
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    s = analyze(ckpts, "hessian,sharpness", options=opts, out=out, workers=workers, threads=threads, progress=False)
    dt = time.perf_counter() - t0
    print(f"  workers={workers} threads={threads}: {dt:.1f}s ({s})", file=sys.stderr, flush=True)
    if s.failed:
        raise SystemExit(f"{len(s.failed)} tasks failed, e.g. {s.failed[0]['error']}\n{s.failed[0]['traceback']}")
    return dt, sum(r["cpu_seconds"] for r in s.done)


def variables(out: Path) -> dict[str, dict[str, bytes]]:
    got = {}
    for f in sorted(out.rglob("*.nc")):
        ds = results.read_result(f)
        got[f.relative_to(out).as_posix()] = {k: np.asarray(ds[k].values).tobytes() for k in ds.data_vars}
    return got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", type=int, default=None, help="default 8 (4 with --quick)")
    ap.add_argument("--width", type=int, default=None, help="resnet1d width (default 16; 8 with --quick)")
    ap.add_argument("--quick", action="store_true", help="tiny options: a smoke test, not a measurement")
    ap.add_argument("--json", default=None, help="write the numbers here")
    ap.add_argument("--two-threads", action="store_true", help="also time 1 worker with 2 torch threads")
    args = ap.parse_args()
    args.width = args.width or (8 if args.quick else 16)
    args.checkpoints = args.checkpoints or (4 if args.quick else 8)

    tmp = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    try:
        ckpts = tmp / "ckpts"
        make_checkpoints(ckpts, args.checkpoints, args.width, 1024)
        opts = options(args.quick)
        load0 = os.getloadavg()[0]
        # Warm caches (imports, data generation) so the serial baseline is not charged for them.
        timed(ckpts / "run" / "epoch_0000.pt", tmp / "warm", opts, workers=1, threads=1)
        t1, c1 = timed(ckpts, tmp / "w1", opts, workers=1, threads=1)
        t2, c2 = timed(ckpts, tmp / "w2", opts, workers=2, threads=1)
        t1t2, c1t2 = timed(ckpts, tmp / "w1t2", opts, workers=1, threads=2) if args.two_threads else (None, None)
        load1 = os.getloadavg()[0]
        same = variables(tmp / "w1") == variables(tmp / "w2")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    tasks = 2 * args.checkpoints
    speedup = t1 / t2
    print(f"{args.checkpoints} checkpoints x (hessian, sharpness) = {tasks} tasks; resnet1d width {args.width}; "
          f"{os.cpu_count()} CPUs; load average {load0:.1f} -> {load1:.1f}" + (" (--quick)" if args.quick else ""))
    print()
    print("| run | wall time (s) | task CPU time (s) | CPU obtained (cores) | speed-up vs 1 worker |")
    print("|---|---|---|---|---|")
    print(f"| 1 worker x 1 thread | {t1:.1f} | {c1:.1f} | {c1 / t1:.2f} | 1.00 |")
    print(f"| 2 workers x 1 thread | {t2:.1f} | {c2:.1f} | {c2 / t2:.2f} | **{speedup:.2f}** (target >= {TARGET}) |")
    if t1t2 is not None:
        print(f"| 1 worker x 2 threads | {t1t2:.1f} | {c1t2:.1f} | {c1t2 / t1t2:.2f} | {t1 / t1t2:.2f} |")
    print()
    print("CPU obtained = summed task CPU time / wall time: with 2 workers on an idle 2-core machine it")
    print("approaches 2; well below that, other processes held the cores and the speed-up is not ours to get.")
    print(f"2-worker results bitwise equal to 1-worker results: {same}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "tasks": tasks, "t_1worker": t1, "t_2workers": t2, "t_1worker_2threads": t1t2,
            "cpu_1worker": c1, "cpu_2workers": c2,
            "speedup": speedup, "bitwise_equal": same, "load_before": load0, "load_after": load1,
        }, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
