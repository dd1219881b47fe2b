"""SGD vs SAM minima on 1-D and 2-D filter-normalized slices, and the line between them.

The papers: "Visualizing the Loss Landscape of Neural Nets" (Li et al., arXiv 1712.09913)
introduced filter-normalized random directions so that slices of different networks can be
compared, and found flatter slices for the minima that generalize better (small batches, skip
connections: Figs. 1, 5). "Sharpness-Aware Minimization for Efficiently Improving
Generalization" (Foret et al., arXiv 2010.01412) Fig. 1 shows such a surface for a ResNet: a sharp
minimum after SGD, a wide one after SAM (a picture, no numbers).

This script: the default runs of ``analyses/runs.py`` (MNIST-1D, resnet1d width 16 with
BatchNorm, SGD and SAM rho=0.05, 3 seeds), at each run's last epoch, on the first 1024 training
examples: a 1-D slice along one seeded filter-normalized Gaussian direction (biases and BatchNorm
parameters not moved, Li et al.'s ``--xignore biasbn``; BatchNorm running statistics of the
centre), a 2-D slice along two, and the linear interpolation ``theta_SGD + alpha (theta_SAM -
theta_SGD)`` between the SGD and SAM runs of the same seed (same initialization and data order),
with BatchNorm statistics re-estimated at every point (the two ends have their own statistics).
The table gives the loss rise ``L(theta + alpha d) - L(theta)`` averaged over ``+alpha`` and
``-alpha`` (1-D), over the whole 2-D grid, and the interpolation's barrier ``max_{0<=alpha<=1}
L - max(L(0), L(1))``.

Measured: not yet run in full (the numbers of the first full run follow in the next commit).
"""

from __future__ import annotations

import contextlib
import sys

import numpy as np
import runs

from landscape import plots
from landscape.batch import analyze
from landscape.cli import main as landscape_cli
from landscape.results import open_results

SCRIPT = "landscape_slices"
SLICES = {  # name -> the registered `slice` analysis' options (landscape.SliceOptions)
    "random1d": {"kind": "random", "ndim": 1, "grid": "-1:1:21"},
    "random2d": {"kind": "random", "ndim": 2, "grid": "-1:1:11"},
}
INTERPOLATION_GRID = "-0.5:1.5:21"


def rise(ds, alpha: float) -> float:
    """Mean loss rise at +alpha and -alpha over the centre (a 1-D slice)."""
    at = ds.loss.sel(alpha=[-alpha, alpha], method="nearest")
    return float(at.mean() - ds.loss.sel(alpha=0.0))


def barrier(ds) -> float:
    """The interpolation's barrier: highest loss between the ends minus the higher end."""
    inside = ds.loss.sel(alpha=slice(0.0, 1.0))
    ends = ds.loss.sel(alpha=[0.0, 1.0], method="nearest")
    return float(inside.max() - ends.max())


def main(argv: list[str] | None = None) -> dict:
    p = runs.parser(__doc__.splitlines()[0], optimizers=("sgd", "sam"))
    p.add_argument("--n", type=int, default=1024, help="training examples the slices are taken over")
    args = p.parse_args(argv)
    study = runs.Study.from_args(args, SCRIPT)
    runs.setup_logging()
    study.train()
    q = study.quick
    n = min(args.n, 128) if q else args.n
    grids = {"random1d": "-1:1:5", "random2d": "-1:1:3"} if q else {k: v["grid"] for k, v in SLICES.items()}

    results = {}
    for name, options in SLICES.items():
        analyze(study.final_checkpoints(), "slice", out=study.results / name, device=study.device, progress=False,
                options={"data": {"n": n}, "slice": {**options, "grid": grids[name], "batch_size": min(n, 512)}})
        results[name] = open_results(study.results / name, "slice")
    pairs = "sgd" in study.optimizers and "sam" in study.optimizers
    if pairs:  # `landscape slice A B`: the interpolation through the results store (prints its path)
        for seed in study.seeds:
            argv = ["slice", str(study.checkpoint("sgd", seed)), str(study.checkpoint("sam", seed)),
                    f"--grid={'-0.5:1.5:5' if q else INTERPOLATION_GRID}", "--out", str(study.results / "interpolation"),
                    "--bn-mode", "recompute", "--n", str(n), "--batch-size", str(min(n, 512)),
                    "--device", study.device, "--no-progress"]
            with contextlib.redirect_stdout(sys.stderr):
                if landscape_cli(argv) != 0:
                    raise SystemExit(f"{SCRIPT}: landscape {' '.join(argv)} failed")
        results["interpolation"] = open_results(study.results / "interpolation", "slice")

    one, two = results["random1d"].isel(step=-1), results["random2d"].isel(step=-1)
    a = 0.5
    rows = {}
    for opt in study.optimizers:
        r1 = [one.sel(run=runs.run_name(opt, s)) for s in study.seeds]
        r2 = [two.sel(run=runs.run_name(opt, s)) for s in study.seeds]
        rows[opt] = {
            "test_acc": [study.history(opt, s)[-1]["test_acc"] for s in study.seeds],
            "train_loss": [float(x.loss.sel(alpha=0.0)) for x in r1],
            f"1d_rise@{a:g}": [rise(x, a) for x in r1],
            "1d_rise@1": [rise(x, 1.0) for x in r1],
            "2d_mean_rise": [float(x.loss.mean() - x.loss.sel(alpha=0.0, beta=0.0)) for x in r2],
        }
    runs.print_table(f"{SCRIPT}: {study.name}, epoch {study.epochs}, filter-normalized random slices on "
                     f"{n} training examples, {len(study.seeds)} seed(s), mean +- std", rows)
    if pairs:
        line = results["interpolation"].isel(step=-1)
        b = [barrier(line.sel(run=runs.run_name("sgd", s))) for s in study.seeds]
        mid = [float(line.loss.sel(run=runs.run_name("sgd", s)).sel(alpha=0.5, method="nearest")) for s in study.seeds]
        print(f"interpolation sgd -> sam (same seed, BatchNorm recomputed): barrier {runs.mean_std(b)}, "
              f"loss at alpha=0.5 {runs.mean_std(mid)}")
        rows["interpolation"] = {"barrier": b, "loss@0.5": mid}

    colors = runs.colors(results["random1d"].run.values)
    seed0 = [runs.run_name(o, study.seeds[0]) for o in study.optimizers]
    # one log-spaced colour scale for all panels, so SGD's and SAM's basins compare by eye
    shown = results["random2d"].loss.sel(run=seed0)
    levels = np.geomspace(float(shown.min()), float(shown.max()), 16)
    figures = {
        "slice1d": plots.slice_curves(results["random1d"], colors=colors),
        "slice2d": plots.slice_contour(results["random2d"], run=seed0, colors=colors, log=True, levels=levels),
        "surface2d": plots.slice_surface(results["random2d"], run=seed0, colors=colors),
    }
    if pairs:
        figures["interpolation"] = plots.interpolation_curves(results["interpolation"], colors=colors)
    for name, fig in figures.items():
        plots.save(fig, study.figures / name)
    print(f"figures: {study.figures}")
    return rows


if __name__ == "__main__":
    main()
