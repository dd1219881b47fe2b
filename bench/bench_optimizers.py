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

Then a **DDP row**: the same step under ``DistributedDataParallel`` with 2 CPU processes (gloo,
1 thread each, the batch split over them): SGD, SAM (all) with per-replica perturbations (ascent
under ``no_sync``), SAM (all) with the global perturbation (one extra all-reduce), SAM-ON and
MSAM; a step's time is the slowest rank's. And, only on a CUDA device, **bf16 rows**
(autocast) for ResNet-20 and WRN-16-8 with the issue's GPU targets (SAM-ON / SAM-all <= 0.80,
MSAM / SGD <= 1.05); without CUDA they are reported as not measured.

Usage:
    .venv/bin/python bench/bench_optimizers.py                  # CPU (or CUDA if available)
    .venv/bin/python bench/bench_optimizers.py --device cuda --repeats 50
    .venv/bin/python bench/bench_optimizers.py --quick          # tiny sizes, a smoke test
    .venv/bin/python bench/bench_optimizers.py --no-ddp         # skip the 2-process row

Prints a markdown table and, with ``--json PATH``, writes the numbers.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from landscape import distributed as D
from landscape.models import build_model
from landscape.optim import MSAM, SAM, train_step
from landscape.precision import Precision

TARGETS = {"SAM-ON / SAM (all)": 0.85, "MSAM / SGD": 1.10}
GPU_TARGETS = {"SAM-ON / SAM (all)": 0.80, "MSAM / SGD": 1.05}  # issue 11, bf16 on a GPU


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


def _time_rounds(runs, x, y, device, warmup, repeats, step, sync_ranks=False):
    """Interleaved rounds; ``step(model, opt, x, y)``; with ``sync_ranks`` a barrier before each
    step and the slowest rank's time."""
    names = list(runs)

    def one(name):
        m, opt = runs[name]
        if sync_ranks:
            dist.barrier()
        _sync(device)
        t0 = time.perf_counter()
        step(m, opt, x, y)
        _sync(device)
        dt = time.perf_counter() - t0
        if sync_ranks:
            t = torch.tensor(dt, dtype=torch.float64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            dt = float(t)
        return dt

    for _ in range(warmup):
        for name in names:
            one(name)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            times[name].append(one(name))
    return times


def _ratios(times, ref):
    return {n: statistics.median(t / s for t, s in zip(times[n], times[ref])) for n in times}


def _ddp_worker(rank, world, init_file, out, depth, batch, warmup, repeats):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = build_model("resnet_cifar", input_shape=(3, 32, 32), num_classes=10, depth=depth).train()
        base = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}
        runs = {}
        for name, make in {
            "SGD": lambda m: torch.optim.SGD(m.parameters(), **base),
            "SAM (all), local eps": lambda m: SAM(m, torch.optim.SGD, rho=0.05, **base),
            "SAM (all), global eps": lambda m: SAM(m, torch.optim.SGD, rho=0.05, ddp_perturbation="global", **base),
            "SAM-ON": lambda m: SAM(m, torch.optim.SGD, rho=0.5, mask="norm", **base),
            "MSAM": lambda m: MSAM(m, torch.optim.SGD, rho=3.0, **base),
        }.items():
            ddp = torch.nn.parallel.DistributedDataParallel(copy.deepcopy(model))
            runs[name] = (ddp, make(ddp))
        gen = torch.Generator().manual_seed(0)
        x = D.shard(torch.randn(batch, 3, 32, 32, generator=gen), rank, world)
        y = D.shard(torch.randint(0, 10, (batch,), generator=gen), rank, world)
        times = _time_rounds(runs, x, y, torch.device("cpu"), warmup, repeats,
                             lambda m, o, x, y: train_step(m, o, x, y, F.cross_entropy), sync_ranks=True)
        if rank == 0:
            with open(out, "w") as f:
                json.dump(times, f)
    finally:
        dist.destroy_process_group()


def ddp_row(depth: int, batch: int, warmup: int, repeats: int, world: int = 2) -> dict:
    """Median step times under DDP with ``world`` CPU processes (gloo)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "times.json")
        mp.spawn(_ddp_worker, args=(world, os.path.join(tmp, "rendezvous"), out, depth, batch, warmup, repeats),
                 nprocs=world, join=True)
        with open(out) as f:
            times = json.load(f)
    return {"world_size": world, "backend": "gloo", "median_s": {n: statistics.median(t) for n, t in times.items()},
            "ratio_vs_sgd": _ratios(times, "SGD"),
            "ratio_vs_sam_all": _ratios(times, "SAM (all), local eps")}


def gpu_bf16_rows(device: torch.device, batch: int, warmup: int, repeats: int) -> dict:
    """bf16 autocast step times on CUDA for ResNet-20 and WRN-16-8 (not called without CUDA)."""
    prec = Precision.make("bf16", device)
    out = {}
    for label, name, kw in [("ResNet-20", "resnet_cifar", {"depth": 20}),
                            ("WRN-16-8", "wrn", {"depth": 16, "widen_factor": 8})]:
        torch.manual_seed(0)
        model = build_model(name, input_shape=(3, 32, 32), num_classes=10, **kw).to(device).train()
        runs = {n: v for n, v in _optimizers(model).items() if n in ("SGD", "SAM (all)", "SAM-ON", "MSAM")}
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 3, 32, 32, generator=gen).to(device)
        y = torch.randint(0, 10, (batch,), generator=gen).to(device)

        def step(m, o, x, y):
            if isinstance(o, (SAM, MSAM)):
                o.train_step(m, x, y, F.cross_entropy, autocast=prec.autocast)
            else:
                with prec.autocast():
                    loss = F.cross_entropy(m(x), y)
                o.zero_grad(set_to_none=True)
                loss.backward()
                o.step()

        times = _time_rounds(runs, x, y, device, warmup, repeats, step)
        ratio, vs_all = _ratios(times, "SGD"), _ratios(times, "SAM (all)")
        out[label] = {"median_s": {n: statistics.median(t) for n, t in times.items()}, "ratio_vs_sgd": ratio,
                      "checks": {"SAM-ON / SAM (all)": vs_all["SAM-ON"], "MSAM / SGD": ratio["MSAM"]}}
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
    ap.add_argument("--ddp", action=argparse.BooleanOptionalAction, default=True,
                    help="also time the 2-process DDP row (CPU, gloo)")
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
    times = _time_rounds(runs, x, y, device, args.warmup, args.repeats,
                         lambda m, o, x, y: train_step(m, o, x, y, F.cross_entropy))
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
    if args.ddp:
        row = ddp_row(args.depth, args.batch, args.warmup, args.repeats)
        result["ddp"] = row
        print()
        print(f"DDP: {row['world_size']} CPU processes ({row['backend']}, 1 thread each), global batch {args.batch} "
              f"({args.batch // row['world_size']} per process); a step's time is the slowest rank's")
        print()
        print("| optimizer (DDP x2) | median step (ms) | / SGD | / SAM (all), local eps |")
        print("|---|---:|---:|---:|")
        for n in row["median_s"]:
            print(f"| {n} | {1e3 * row['median_s'][n]:.1f} | {row['ratio_vs_sgd'][n]:.2f} | {row['ratio_vs_sam_all'][n]:.2f} |")
    print()
    if device.type == "cuda":
        rows = gpu_bf16_rows(device, args.batch, args.warmup, args.repeats)
        result["gpu_bf16"] = rows
        for label, r in rows.items():
            print(f"bf16 autocast, {label}, batch {args.batch}, {result['device_name']}")
            print("| optimizer | median step (ms) | / SGD |")
            print("|---|---:|---:|")
            for n, t in r["median_s"].items():
                print(f"| {n} | {1e3 * t:.1f} | {r['ratio_vs_sgd'][n]:.2f} |")
            for k, target in GPU_TARGETS.items():
                v = r["checks"][k]
                print(f"{label} {k}: {v:.3f} (GPU target <= {target:.2f}: {'met' if v <= target else 'NOT met'})")
            print()
    else:
        result["gpu_bf16"] = "not measured (no CUDA device)"
        print("bf16 GPU rows (ResNet-20, WRN-16-8; targets SAM-ON / SAM (all) <= 0.80, MSAM / SGD <= 1.05): "
              "not measured, no CUDA device in this run")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
