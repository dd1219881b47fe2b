"""Run every benchmark in bench/ in one go (``make bench``) and print their tables.

Each ``bench_*.py`` prints its own side-by-side table of ratios against the reference tools;
copy the output into bench/RESULTS.md with the machine and date.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path

import torch


def main() -> int:
    here = Path(__file__).resolve().parent
    scripts = sorted(here.glob("bench_*.py"))
    only = set(sys.argv[1:])
    print(f"# landscape benchmarks, {time.strftime('%Y-%m-%d')}, {platform.node()}")
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, CUDA: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
    failed = []
    for script in scripts:
        if only and script.stem not in only:
            continue
        print(f"\n## {script.name}\n", flush=True)
        rc = subprocess.call([sys.executable, str(script)])
        if rc:
            failed.append(script.name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
