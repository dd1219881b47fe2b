"""Cost of a 2-D loss-landscape slice: time per grid point vs the floor and vs loss-landscapes.

Measures, in one run, on ``resnet_cifar`` (depth 20 by default) and synthetic 32x32 samples
(1,000 by default; the timing does not depend on the pixel values), eval-mode BatchNorm:

* ``floor``: one no-grad forward pass over the same samples with plain PyTorch, at the best of a
  few batch sizes (``--batch-sizes``): no slice can evaluate a grid point for less;
* ``landscape``: :func:`landscape.loss_slice` over an N x N grid (``--points N``, default 21) of
  two filter-normalized Gaussian directions (:func:`landscape.directions.random_direction`), at
  the floor's best batch size; time per grid point = wall time / N^2 (directions included);
* ``landscape vmap``: the same with ``vmap`` (several grid points per batch), when the analysis
  offers it;
* ``loss-landscapes``: the PyPI package ``loss-landscapes`` 3.0.6 ``random_plane(model, metric,
  steps=N, normalization="filter", deepcopy_model=True)``, the same N x N points, with a metric
  that evaluates the same samples at the same batch size (timing only: its directions are
  uniform, not Gaussian, and its grid differs); and, when the best batch size is not the whole
  set, as its documentation uses it: its ``Loss`` metric over all samples in one call.

Targets (issue 12): landscape <= 1.1x the floor per point, >= 1.5x faster than loss-landscapes.
Time per point is the measure, so a small grid (``--points 5``) gives it on a shared machine.

Usage:
    .venv/bin/python bench/bench_slices.py                    # 21 x 21, CPU (or CUDA)
    .venv/bin/python bench/bench_slices.py --points 5 --repeats 2
    .venv/bin/python bench/bench_slices.py --quick            # tiny sizes, a smoke test

The peer is not a test dependency: ``make bench`` installs it with
``pip install --no-deps loss-landscapes==3.0.6`` (it needs only numpy and torch); without it the
script says so and measures the rest. Prints a markdown table; ``--json PATH`` writes the numbers.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from landscape.atomic import atomic_write_text
from landscape.data import get_dataset
from landscape.models import build_model

PEER = "loss-landscapes==3.0.6"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def _peer():
    """``(random_plane, Metric)`` of loss-landscapes, or ``None`` with a note when it is missing."""
    try:
        import loss_landscapes
        from loss_landscapes.metrics import Metric
    except ImportError as e:
        print(f"NOTE: the peer package is not installed ({e}); its column is left out. Install it with\n"
              f"  {sys.executable} -m pip install --no-deps {PEER}\n(or `make bench`, which does).",
              file=sys.stderr)
        return None
    version = getattr(loss_landscapes, "__version__", None)
    try:
        from importlib.metadata import version as _v

        version = _v("loss-landscapes")
    except Exception:  # noqa: BLE001 - the version is informative only
        pass
    return loss_landscapes.random_plane, Metric, version


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--points", type=int, default=21, help="grid N x N, N odd (default 21)")
    ap.add_argument("--batch-sizes", default="125,250,500,1000",
                    help="batch sizes tried for the floor; the best is used by every method")
    ap.add_argument("--repeats", type=int, default=2, help="rounds over all methods (median and min)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--no-vmap", action="store_true", help="leave out the vmap variant")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    ap.add_argument("--json", default=None, help="write the numbers to this file")
    args = ap.parse_args(argv)
    if args.quick:
        args.depth, args.samples, args.points, args.repeats, args.batch_sizes = 8, 64, 3, 1, "32,64"
    if args.points < 1:
        ap.error(f"--points must be >= 1, got {args.points}")
    if args.points % 2 == 0:
        ap.error(f"--points must be odd (the grid holds the centre exactly), got {args.points}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    n_points = args.points ** 2
    load0 = os.getloadavg()

    from landscape.analyses.slices import loss_slice
    from landscape.directions import random_direction

    data = get_dataset("synthetic", num_samples=args.samples, input_shape=(3, 32, 32), num_classes=10)
    model = build_model("resnet_cifar", depth=args.depth, num_classes=10).to(device).eval()
    # Like a trained checkpoint, no parameter entry is exactly 0: loss-landscapes' filter
    # normalization divides by the norm of each 1-D entry and raises ZeroDivisionError on the
    # zero-initialized BatchNorm betas of a fresh model.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g).to(p.device))
    x, y = data.x[: args.samples].to(device), data.y[: args.samples].to(device)
    P = sum(p.numel() for p in model.parameters() if p.requires_grad)

    # The floor: plain no-grad forwards over the staged samples, best batch size.
    sizes = sorted({min(int(b), args.samples) for b in args.batch_sizes.split(",") if b.strip()})

    @torch.no_grad()
    def forward_pass(bs: int) -> None:
        for i in range(0, args.samples, bs):
            F.cross_entropy(model(x[i : i + bs]), y[i : i + bs])

    forward_pass(sizes[0])  # warm-up (allocator, kernels)
    per_size = {bs: min(_timed(lambda bs=bs: forward_pass(bs), device) for _ in range(max(2, args.repeats)))
                for bs in sizes}
    best_bs = min(per_size, key=per_size.get)

    # N x N points for every method (an odd N holds 0; loss_slice would add it to an even one)
    grid = torch.linspace(-1.0, 1.0, args.points).tolist()
    grid[args.points // 2] = 0.0  # exactly

    def ours(points=grid, **extra):
        d1 = random_direction(model, normalization="filter", one_d="ignore", seed=0)
        d2 = random_direction(model, normalization="filter", one_d="ignore", seed=1)
        return loss_slice(model, (x, y), [d1, d2], grid=points, metrics=("loss",), batch_size=best_bs,
                          progress=False, **extra)

    methods = {"floor": lambda: [forward_pass(best_bs) for _ in range(n_points)], "landscape": ours}
    warm = {"floor": lambda: forward_pass(best_bs), "landscape": lambda: ours([0.0])}
    sig = inspect.signature(loss_slice).parameters
    if "memory_format" in sig:
        # loss_slice stages image inputs channels_last by default; these two rows show how much of
        # its time is that layout (the same forward on NHWC inputs) and what it costs without it.
        x_cl = x.contiguous(memory_format=torch.channels_last)

        @torch.no_grad()
        def forward_cl() -> None:
            for i in range(0, args.samples, best_bs):
                F.cross_entropy(model(x_cl[i : i + best_bs]), y[i : i + best_bs])

        methods["floor, channels_last inputs"] = lambda: [forward_cl() for _ in range(n_points)]
        warm["floor, channels_last inputs"] = forward_cl
        methods["landscape, memory_format=contiguous"] = lambda: ours(memory_format="contiguous")
        warm["landscape, memory_format=contiguous"] = lambda: ours([0.0], memory_format="contiguous")
    if "vmap" in sig and not args.no_vmap:
        methods["landscape vmap"] = lambda: ours(vmap=True)
        warm["landscape vmap"] = lambda: ours([0.0], vmap=True)
    peer = _peer()
    if peer is not None:
        random_plane, Metric, peer_version = peer

        class SameSamples(Metric):
            """The loss over the same samples at the same batch size (a data-set mean)."""

            def __call__(self, wrapper) -> float:
                total = 0.0
                for i in range(0, args.samples, best_bs):
                    xb, yb = x[i : i + best_bs], y[i : i + best_bs]
                    total += F.cross_entropy(wrapper.forward(xb), yb).item() * len(yb)
                return total / args.samples

        def theirs(steps=args.points):
            return random_plane(model, SameSamples(), distance=1, steps=steps, normalization="filter",
                                deepcopy_model=True)

        methods[f"loss-landscapes {peer_version}"] = theirs
        warm[f"loss-landscapes {peer_version}"] = lambda: theirs(1)
        if best_bs != args.samples:
            # As its documentation uses it: its own Loss metric, all samples in one call.
            from loss_landscapes.metrics import Loss

            def shipped(steps=args.points):
                return random_plane(model, Loss(F.cross_entropy, x, y), distance=1, steps=steps,
                                    normalization="filter", deepcopy_model=True)

            methods[f"loss-landscapes {peer_version}, its Loss metric (one batch of {args.samples})"] = shipped
            warm[f"loss-landscapes {peer_version}, its Loss metric (one batch of {args.samples})"] = lambda: shipped(1)

    for fn in warm.values():  # one point each first: one-time costs (allocator, thread pool) left out
        fn()
    # Round robin (each method once per round) so a load change on a shared machine hits all alike.
    times: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(args.repeats):
        for k, fn in methods.items():
            times[k].append(_timed(fn, device) / n_points)
    load1 = os.getloadavg()
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    peer_key = next((k for k in methods if k.startswith("loss-landscapes")), None)  # same batches as ours
    # Ratios within each round (the methods ran back to back), then their median: a slow drift of
    # the machine's load cancels out, which the ratio of overall medians does not do.
    over_floor = {k: statistics.median(t / f for t, f in zip(v, times["floor"])) for k, v in times.items()}
    vs_peer = ({k: statistics.median(p / t for t, p in zip(v, times[peer_key])) for k, v in times.items()}
               if peer_key else {})

    out = {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "model": f"resnet_cifar depth {args.depth}",
        "parameters": P,
        "samples": args.samples,
        "grid": f"{args.points}x{args.points}",
        "batch_size": best_bs,
        "floor_by_batch_size_s": per_size,
        "per_point_median_s": med,
        "per_point_min_s": best,
        "per_round_ratio_to_floor_median": over_floor,
        "per_round_speedup_vs_peer_median": vs_peer,
        "raw_per_point_s": times,
        "repeats": args.repeats,
        "load_average": [load0[0], load1[0]],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(f"# slice bench: {out['model']} ({P:,} parameters), {args.samples} samples of 3x32x32, "
          f"grid {out['grid']} ({n_points} points), {out['device']}, {out['threads']} threads, "
          f"torch {out['torch']}, load average {load0[0]:.1f} -> {load1[0]:.1f}")
    print("floor (one no-grad forward over the samples) by batch size: "
          + ", ".join(f"{bs}: {t * 1e3:.0f} ms" for bs, t in per_size.items()) + f"; best {best_bs}")
    print(f"per grid point, median (and min) of {args.repeats} rounds; ratios: median over rounds of the "
          "ratio within a round")
    print("| method | s / point | min s / point | / floor | speed-up vs loss-landscapes |\n|---|---|---|---|---|")
    for k in methods:
        vs = f"{vs_peer[k]:.2f}x" if peer_key else "n/a (not installed)"
        print(f"| {k} | {med[k]:.4f} | {best[k]:.4f} | {over_floor[k]:.2f} | {vs} |")
    if args.json:
        atomic_write_text(args.json, json.dumps(out, indent=2, default=str) + "\n")
    return out


if __name__ == "__main__":
    main()
