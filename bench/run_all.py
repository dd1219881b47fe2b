"""Run every benchmark in bench/ in one go (``make bench``) and print their tables.

Each ``bench_*.py`` prints its own side-by-side table of ratios against the reference tools;
then ``gpu_suite.py`` runs the whole analysis suite on a WRN-28-10 when CUDA is available, and at
toy size (``--tiny``) otherwise (the full size needs a GPU). Copy the output into
bench/RESULTS.md with the machine, the date and the load average. Arguments select scripts by
stem (``run_all.py bench_hessian gpu_suite``).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

# The peers the benches compare against (installed by `make bench` with --no-deps).
PEERS = ("pyhessian", "curvlinops-for-pytorch", "hessian-eigenthings", "loss-landscapes")


def _versions(names) -> list[str]:
    out = []
    for name in names:
        try:
            out.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{name} not installed")
    return out


def main() -> int:
    here = Path(__file__).resolve().parent
    scripts = sorted(here.glob("bench_*.py"))
    only = set(sys.argv[1:])
    print(f"# landscape benchmarks, {time.strftime('%Y-%m-%d')}, {platform.node()}")
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, CUDA: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
    print(f"# load average {os.getloadavg()}; peers: {', '.join(_versions(PEERS))}")
    runs = [[str(s)] for s in scripts]
    # The full suite needs a GPU (tens of minutes of float32 work); on a CPU, the same code at toy size.
    runs.append([str(here / "gpu_suite.py")] + ([] if torch.cuda.is_available() else ["--tiny"]))
    failed = []
    for cmd in runs:
        name = Path(cmd[0]).name
        if only and Path(cmd[0]).stem not in only:
            continue
        print(f"\n## {' '.join([name, *cmd[1:]])}\n", flush=True)
        rc = subprocess.call([sys.executable, *cmd])
        if rc:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
