"""Cost of worst-case m-sharpness: one Auto-PGD step vs one forward+backward, and a full run.

Measures, on ``resnet_cifar`` (depth 20 by default) with CIFAR-shaped synthetic data (the
timing does not depend on the pixel values):

* ``fwd``: one forward pass of a batch of m examples (plain PyTorch, eval mode, no grad);
* ``fwd+bwd``: one forward+backward of the same batch (plain PyTorch autograd) - the baseline;
* ``objective fwd+bwd``: :meth:`Objective.loss_and_grad` of that batch (functional_call and
  plain reverse mode on a leaf copy of theta; what sharpness() calls per step);
* ``apgd step``: wall time of a ``steps``-step Auto-PGD run on that batch divided by its number
  of loss/gradient calls (target: <= 1.2 x the baseline);
* ``reference-style step``: the protocol of the reference code (REFERENCES.md "Sharpness"):
  perturb the model's weights in place, forward+backward, then an *extra* forward pass to read
  the loss at the new point, then restore the weights;
* ``total``: :func:`landscape.analyses.sharpness.sharpness` with n=1024, m=128, 20 steps.

Usage:
    .venv/bin/python bench/bench_sharpness.py                 # CPU (or CUDA if available)
    .venv/bin/python bench/bench_sharpness.py --device cuda --repeats 20
    .venv/bin/python bench/bench_sharpness.py --quick         # tiny sizes, a smoke test

Prints a markdown table and, with ``--json PATH``, writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from landscape.analyses.apgd import apgd
from landscape.analyses.sharpness import sharpness
from landscape.data import get_dataset
from landscape.models import build_model
from landscape.objective import Objective


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--m", type=int, default=128)
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rho", type=float, default=0.005)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--skip-total", action="store_true", help="skip the full n-example run")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    ap.add_argument("--json", default=None, help="write the numbers to this file")
    args = ap.parse_args(argv)
    if args.quick:
        args.depth, args.m, args.n, args.steps, args.repeats = 8, 16, 32, 3, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    ds = get_dataset("synthetic", num_samples=args.n, input_shape=(3, 32, 32), num_classes=10)
    model = build_model("resnet_cifar", depth=args.depth, num_classes=10).to(device).eval()
    x, y = ds.x[: args.m].to(device), ds.y[: args.m].to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    P = sum(p.numel() for p in params)

    @torch.no_grad()
    def fwd():
        F.cross_entropy(model(x), y)

    def fwd_bwd():
        loss = F.cross_entropy(model(x), y)
        torch.autograd.grad(loss, params)

    obj = Objective(model, (x, y), batch_size=args.m, params="all", bn_mode="eval")
    theta0 = obj.theta0
    T = theta0.abs()

    def obj_fwd_bwd():
        obj.loss_and_grad(theta0, 0)

    def run_apgd():
        # exactly the per-step call sharpness() makes (plain autograd through the objective)
        return apgd(lambda d: obj.loss_and_grad(theta0 + d, 0), T, rho=args.rho, norm="linf", steps=args.steps)

    deltas = [torch.zeros_like(p) for p in params]

    def reference_step():
        # Reference protocol per step: weights moved in place, fwd+bwd, extra forward, restore.
        with torch.no_grad():
            for p, d in zip(params, deltas):
                p.add_(d)
        try:
            loss = F.cross_entropy(model(x), y)
            torch.autograd.grad(loss, params)
            with torch.no_grad():
                F.cross_entropy(model(x), y)
        finally:
            with torch.no_grad():
                for p, d in zip(params, deltas):
                    p.sub_(d)

    # Round robin over blocks of the same length (steps + 1 calls, like one APGD run), so a load
    # change on a shared machine affects every quantity alike; per-call medians and minima.
    block = args.steps + 1

    def repeat(fn):
        def run():
            for _ in range(block):
                fn()
            return block
        return run

    def apgd_run():
        return run_apgd().num_evals

    cands = {"fwd": repeat(fwd), "fb": repeat(fwd_bwd), "obj": repeat(obj_fwd_bwd),
             "ref": repeat(reference_step), "apgd": apgd_run}
    fwd(), fwd_bwd(), obj_fwd_bwd(), reference_step(), run_apgd()  # warm-up (tracing, allocator)
    times: dict[str, list[float]] = {k: [] for k in cands}
    for _ in range(args.repeats):
        for k, fn in cands.items():
            _sync(device)
            t = time.perf_counter()
            calls = fn()
            _sync(device)
            times[k].append((time.perf_counter() - t) / calls)
    t_fwd, t_fb, t_obj, t_ref, t_step = (statistics.median(times[k]) for k in cands)
    best = {k: min(v) for k, v in times.items()}

    out = {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "model": f"resnet_cifar depth {args.depth}",
        "parameters": P,
        "m": args.m,
        "steps": args.steps,
        "fwd_s": t_fwd,
        "fwd_bwd_s": t_fb,
        "objective_fwd_bwd_s": t_obj,
        "apgd_step_s": t_step,
        "apgd_step_over_fwd_bwd": t_step / t_fb,
        "reference_step_s": t_ref,
        "reference_step_over_fwd_bwd": t_ref / t_fb,
        "min_apgd_step_over_min_fwd_bwd": best["apgd"] / best["fb"],
        "min_reference_step_over_min_fwd_bwd": best["ref"] / best["fb"],
        "repeats": args.repeats,
        "raw_per_call_s": times,
    }
    if not args.skip_total:
        t = time.perf_counter()
        res = sharpness(model, ds, kind="worst", norm="linf", rho=args.rho, m=args.m, n=args.n, steps=args.steps)
        _sync(device)
        out["total_s"] = time.perf_counter() - t
        out["total_grad_calls"] = int(res.grad_calls.sum() + res.clean_grad_calls.sum())
        out["total_forward_calls"] = int(res.forward_calls.sum() + res.clean_forward_calls.sum())
        out["n"] = args.n
        out["sharpness_mean"] = float(res.sharpness_mean[0])

    rows = [
        ("forward (m examples)", out["fwd_s"], out["fwd_s"] / t_fb),
        ("forward+backward (autograd, baseline)", t_fb, 1.0),
        ("Objective.loss_and_grad (functional_call + autograd)", t_obj, t_obj / t_fb),
        (f"APGD step ({args.steps}-step run / calls)", t_step, t_step / t_fb),
        ("reference-style step (fwd+bwd + extra fwd)", t_ref, t_ref / t_fb),
    ]
    print(f"# sharpness bench: {out['model']} ({P:,} parameters), m={args.m}, {out['device']}, "
          f"{out['threads']} threads, torch {out['torch']}")
    keys = ["fwd", "fb", "obj", "apgd", "ref"]
    print(f"per call, median (and min) of {args.repeats} rounds of {block}-call blocks")
    print("| what | seconds | / fwd+bwd | min ratio |\n|---|---|---|---|")
    for (name, s, r), k in zip(rows, keys):
        print(f"| {name} | {s:.4f} | {r:.2f} | {best[k] / best['fb']:.2f} |")
    if "total_s" in out:
        print(f"| total worst-case sharpness, n={args.n}, m={args.m}, {args.steps} steps "
              f"({out['total_grad_calls']} fwd+bwd, {out['total_forward_calls']} fwd) | {out['total_s']:.1f} | | |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
