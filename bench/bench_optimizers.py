"""Step time of the SAM family and MSAM relative to SGD (SAM-ON Section 4.3, MSAM Section 3).

One full :func:`landscape.optim.train_step` (forward, backward(s), update) on ``resnet_cifar``
(depth 20 by default), 32x32 inputs, batch 128, for:

* ``SGD``: the baseline (momentum 0.9, weight decay 5e-4);
* ``SAM (all)``: two forward/backward passes;
* ``SAM-ON``: mask ``norm``; the ascent pass computes no weight gradients outside the mask;
* ``SAM-ON, full ascent``: the same mask with that saving switched off (to measure it);
* ``SAM-ON B3``: normalization parameters of stage 3 only (backward stops early);
* ``MSAM``: one forward/backward at the shifted weights.

Optimizers are timed in interleaved rounds (each round times one step of every optimizer, in a
rotating order) so that load drifts on a shared machine hit all of them alike; ratios are
medians over rounds of ``time / SGD time in the same round``.

Usage:
    .venv/bin/python bench/bench_optimizers.py                  # CPU (or CUDA if available)
    .venv/bin/python bench/bench_optimizers.py --device cuda --repeats 50
    .venv/bin/python bench/bench_optimizers.py --quick          # tiny sizes, a smoke test

Prints a markdown table and, with ``--json PATH``, writes the numbers.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from landscape.models import build_model
from landscape.optim import MSAM, SAM, train_step

TARGETS = {"SAM-ON / SAM (all)": 0.85, "MSAM / SGD": 1.10}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _optimizers(model: torch.nn.Module) -> dict[str, tuple[torch.nn.Module, torch.optim.Optimizer]]:
    base = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}
    out = {}

    def make(name, fn):
        m = copy.deepcopy(model)
        out[name] = (m, fn(m))

    make("SGD", lambda m: torch.optim.SGD(m.parameters(), **base))
    make("SAM (all)", lambda m: SAM(m, torch.optim.SGD, rho=0.05, **base))
    make("SAM-ON", lambda m: SAM(m, torch.optim.SGD, rho=0.5, mask="norm", **base))

    def full_ascent(m):
        opt = SAM(m, torch.optim.SGD, rho=0.5, mask="norm", **base)
        opt._ascent_all = True  # ablation: the ascent pass differentiates every parameter
        return opt

    make("SAM-ON, full ascent", full_ascent)
    make("SAM-ON B3", lambda m: SAM(m, torch.optim.SGD, rho=0.5, mask="blocks", blocks="B3", **base))
    make("MSAM", lambda m: MSAM(m, torch.optim.SGD, rho=3.0, **base))
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per optimizer")
    ap.add_argument("--repeats", type=int, default=10, help="timed rounds")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    ap.add_argument("--json", default=None, help="write the numbers to this file")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.warmup, args.repeats = 16, 1, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model("resnet_cifar", input_shape=(3, 32, 32), num_classes=10, depth=args.depth).to(device)
    model.train()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=gen).to(device)
    runs = _optimizers(model)
    names = list(runs)

    def one(name):
        m, opt = runs[name]
        _sync(device)
        t0 = time.perf_counter()
        train_step(m, opt, x, y, F.cross_entropy)
        _sync(device)
        return time.perf_counter() - t0

    for _ in range(args.warmup):
        for name in names:
            one(name)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            times[name].append(one(name))
    ratio = {n: statistics.median(t / s for t, s in zip(times[n], times["SGD"])) for n in names}
    vs_all = {n: statistics.median(t / s for t, s in zip(times[n], times["SAM (all)"])) for n in names}
    result = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "depth": args.depth,
        "batch": args.batch,
        "repeats": args.repeats,
        "median_s": {n: statistics.median(times[n]) for n in names},
        "ratio_vs_sgd": ratio,
        "ratio_vs_sam_all": vs_all,
        "checks": {
            "SAM-ON / SAM (all)": vs_all["SAM-ON"],
            "MSAM / SGD": ratio["MSAM"],
        },
    }
    print(f"resnet_cifar depth {args.depth}, batch {args.batch}, 32x32, {result['device']} "
          f"({result['device_name']}, {result['threads']} threads), {args.repeats} interleaved rounds")
    print()
    print("| optimizer | median step (ms) | / SGD | / SAM (all) |")
    print("|---|---:|---:|---:|")
    for n in names:
        print(f"| {n} | {1e3 * result['median_s'][n]:.1f} | {ratio[n]:.2f} | {vs_all[n]:.2f} |")
    print()
    for k, target in TARGETS.items():
        v = result["checks"][k]
        print(f"{k}: {v:.3f} (target <= {target:.2f}: {'met' if v <= target else 'NOT met'})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
