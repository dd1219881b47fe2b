"""How many SLQ runs and steps the Hessian density needs: convergence against dense float64 truth.

Stochastic Lanczos quadrature (``landscape.analyses.slq``) with ``runs`` Rademacher starts and
``steps`` Lanczos steps per start, on the exact float64 Hessian of a tiny ``resnet_cifar``
(``torch.func.jacrev(jacrev)``, eval-mode BatchNorm), near initialization and after fitting.
For every (runs, steps) on a grid, over ``--repeats`` independent seeds, it reports the mean of:

* **moments**: the relative error of the first four spectral moments ``tr(H^k)/P`` (k = 1..4),
  from the quadrature ``mean_r sum_i w_ri theta_ri^k`` (Gauss quadrature is exact per start for
  degree <= 2 steps - 1, so these errors are the Monte Carlo error of the starts);
* **L1**: ``int |rho_SLQ - rho_true|`` of the Gaussian-broadened densities, both broadened with
  the same ``sigma`` (1 % of the exact spectral range, what ``hessian_spectrum`` uses by default);
* **W1**: the Wasserstein-1 distance between the quadrature's node distribution (weights / runs)
  and the exact eigenvalue distribution, relative to the spectral range.

The default budget of ``hessian_spectrum`` (``slq_runs`` x ``slq_steps``) is chosen from this
curve (see the README, "Hessian spectra"). Usage::

    .venv/bin/python bench/bench_density.py            # a few minutes on two shared CPU cores
    .venv/bin/python bench/bench_density.py --quick    # smoke test

Prints markdown tables; ``--json PATH`` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import wasserstein_distance

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_hessian import f64_loss_fn, make_problem  # noqa: E402

from landscape.analyses.slq import gaussian_density, slq  # noqa: E402


def dense_hessian(model, x, y, chunk=128):
    """Exact float64 Hessian of the eval-mode mean cross-entropy over all parameters."""
    f, theta = f64_loss_fn(model, x, y)
    return torch.func.jacrev(torch.func.jacrev(f), chunk_size=chunk)(theta)


def errors(H, eigs, runs, steps, seed, sigma, grid, true_density):
    nodes, weights = slq(H, runs=runs, steps=steps, seed=seed)
    ok = torch.isfinite(nodes)
    th = torch.where(ok, nodes, torch.zeros_like(nodes))
    moments = []
    for k in range(1, 5):
        truth = float((eigs**k).mean())
        est = float((weights * th**k).sum(1).mean())
        moments.append(abs(est - truth) / abs(truth))
    dens = gaussian_density(nodes, weights, grid, sigma)
    l1 = float(torch.trapezoid((dens - true_density).abs(), grid))
    w1 = wasserstein_distance(th[ok].numpy(), eigs.numpy(), u_weights=weights[ok].numpy())
    return moments, l1, w1 / float(eigs.max() - eigs.min())


def study(H, runs_grid, steps_grid, repeats, seed0):
    eigs = torch.linalg.eigvalsh(H)
    spread = float(eigs.max() - eigs.min())
    sigma = 0.01 * spread
    grid = torch.linspace(float(eigs.min()) - 5 * sigma, float(eigs.max()) + 5 * sigma, 2000, dtype=torch.float64)
    true_density = gaussian_density(eigs[None, :], torch.full((1, eigs.numel()), 1.0 / eigs.numel(),
                                                              dtype=torch.float64), grid, sigma)
    table = {}
    for runs in runs_grid:
        for steps in steps_grid:
            ms, l1s, w1s = [], [], []
            for r in range(repeats):
                m, l1, w1 = errors(H, eigs, runs, steps, seed0 + r, sigma, grid, true_density)
                ms.append(m)
                l1s.append(l1)
                w1s.append(w1)
            table[(runs, steps)] = {"moments": np.mean(ms, 0).tolist(), "l1": float(np.mean(l1s)),
                                    "w1": float(np.mean(w1s)), "hvps": runs * steps}
    return table


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--width", type=int, default=2)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--size", type=int, default=8)
    ap.add_argument("--train-steps", default="10,100", help="SGD steps of each state (10: near init; 100: fitted)")
    ap.add_argument("--runs", default="1,2,3,5,7,10,15,20")
    ap.add_argument("--steps", default="10,20,30,45,60,90")
    ap.add_argument("--repeats", type=int, default=10, help="independent seeds per (runs, steps)")
    ap.add_argument("--seed0", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.samples, args.runs, args.steps, args.repeats, args.train_steps = 16, "1,5", "10,30", 2, "10"
    if args.threads:
        torch.set_num_threads(args.threads)
    runs_grid = [int(t) for t in args.runs.split(",")]
    steps_grid = [int(t) for t in args.steps.split(",")]
    out = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__, "states": []}
    for train in (int(t) for t in args.train_steps.split(",")):
        t0 = time.perf_counter()
        model, x, y = make_problem(args.depth, args.width, args.samples, args.size, torch.device("cpu"), seed=7,
                                   steps=train)
        H = dense_hessian(model, x, y)
        table = study(H, runs_grid, steps_grid, args.repeats, args.seed0)
        state = "fitted" if train >= 100 else "near init"
        print(f"\n## {state}: resnet_cifar depth {args.depth} width {args.width}, {args.samples} samples of "
              f"{args.size}x{args.size}, P = {H.shape[0]:,}, {train} SGD steps; mean over {args.repeats} seeds "
              f"({time.perf_counter() - t0:.0f} s)\n")
        print("| runs x steps | HVPs | rel. err. tr(H)/P | tr(H^2)/P | tr(H^3)/P | tr(H^4)/P | L1 density | W1 / range |")
        print("|---|---|---|---|---|---|---|---|")
        for (runs, steps), r in table.items():
            m = r["moments"]
            print(f"| {runs} x {steps} | {r['hvps']} | {m[0]:.1e} | {m[1]:.1e} | {m[2]:.1e} | {m[3]:.1e} | "
                  f"{r['l1']:.3f} | {r['w1']:.4f} |")
        out["states"].append({"state": state, "sgd_steps": train, "parameters": H.shape[0],
                              "table": [{"runs": k[0], "steps": k[1], **v} for k, v in table.items()]})
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
