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
``-alpha`` (1-D), averaged over the 2-D grid points with ``|alpha|, |beta| <= 0.25``, and the
interpolation's barrier ``max_{0<=alpha<=1} L - max(L(0), L(1))``.

Measured on the last run (2026-12-01, 2-core CPU shared with other jobs, load average 12-15;
the slices 7 min on reused runs, 13 min with the training of the 6 runs), epoch 5, seed mean +-
std over seeds 0, 1, 2 (one random direction per run, seed 0 of the direction generator):

    run  test_acc         train_loss        1d_rise@0.1      1d_rise@0.2    1d_rise@0.5  2d_rise@0.25
    sgd  0.974 +- 0.0035  0.0809 +- 0.015   0.104 +- 0.071   0.747 +- 0.59  8.4 +- 3.7   1.9 +- 0.51
    sam  0.97 +- 0.0025   0.0902 +- 0.0084  0.0554 +- 0.031  0.365 +- 0.19  5.93 +- 1    1.2 +- 0.53
    interpolation sgd -> sam: barrier 0.0527 +- 0.022, loss at alpha=0.5 0.147 +- 0.019

SAM's minimum is the flatter one on every slice: the loss rises about half as much within 0.2
filter norms (1-D) and 0.6x as much in the 2-D box, and its basin is rounder
(``figures/landscape_slices/mnist1d-resnet1d/slice2d.png``) - the picture of SAM Fig. 1 and Li et
al. But the seeds' spreads overlap (one direction per run is a noisy probe), and the flatter
minimum does not generalize better here (test accuracy 0.970 vs 0.974). The interpolation shows
no separating wall: from the same initialization, SGD and SAM end in one basin (a barrier of
0.05 nats over end losses of 0.07-0.09).
"""

from __future__ import annotations

import contextlib
import sys

import numpy as np
import runs
import xarray as xr

from landscape import plots
from landscape.batch import analyze
from landscape.cli import main as landscape_cli
from landscape.results import open_results

SCRIPT = "landscape_slices"
SLICES = {  # name -> the registered `slice` analysis' options (landscape.SliceOptions)
    "random1d": {"kind": "random", "ndim": 1, "grid": "-1:1:21"},
    "random2d": {"kind": "random", "ndim": 2, "grid": "-1:1:9"},
}
INTERPOLATION_GRID = "-0.5:1.5:21"


def rise(ds, alpha: float) -> float:
    """Mean loss rise at +alpha and -alpha over the centre (a 1-D slice)."""
    at = ds.loss.sel(alpha=[-alpha, alpha], method="nearest")
    return float(at.mean() - ds.loss.sel(alpha=0.0))


def rise2d(ds, r: float) -> float:
    """Mean loss rise over the centre on the grid points with ``|alpha|, |beta| <= r`` (a 2-D slice)."""
    box = ds.loss.sel(alpha=slice(-r, r), beta=slice(-r, r))
    return float(box.mean() - ds.loss.sel(alpha=0.0, beta=0.0))


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

    results = {}
    for name, options in SLICES.items():
        analyze(study.final_checkpoints(), "slice", out=study.results / name, device=study.device, progress=False,
                options={"data": {"n": n}, "slice": {**options, "batch_size": min(n, 512)}})
        results[name] = open_results(study.results / name, "slice")
    pairs = "sgd" in study.optimizers and "sam" in study.optimizers
    if pairs:  # `landscape slice A B`: the interpolation through the results store (prints its path)
        for seed in study.seeds:
            argv = ["slice", str(study.checkpoint("sgd", seed)), str(study.checkpoint("sam", seed)),
                    f"--grid={INTERPOLATION_GRID}", "--out", str(study.results / "interpolation"),
                    "--bn-mode", "recompute", "--n", str(n), "--batch-size", str(min(n, 512)),
                    "--device", study.device, "--no-progress"]
            with contextlib.redirect_stdout(sys.stderr):
                if landscape_cli(argv) != 0:
                    raise SystemExit(f"{SCRIPT}: landscape {' '.join(argv)} failed")
        # each pair's options hash covers its two checkpoints' bytes: one option set per seed folder
        results["interpolation"] = xr.concat(
            [open_results(study.results / "interpolation" / runs.run_name("sgd", s), "slice") for s in study.seeds],
            dim="run", coords="different")

    one, two = results["random1d"].isel(step=-1), results["random2d"].isel(step=-1)
    rows = {}
    for opt in study.optimizers:
        r1 = [one.sel(run=runs.run_name(opt, s)) for s in study.seeds]
        r2 = [two.sel(run=runs.run_name(opt, s)) for s in study.seeds]
        rows[opt] = {
            "test_acc": [study.history(opt, s)[-1]["test_acc"] for s in study.seeds],
            "train_loss": [float(x.loss.sel(alpha=0.0)) for x in r1],
            "1d_rise@0.1": [rise(x, 0.1) for x in r1],
            "1d_rise@0.2": [rise(x, 0.2) for x in r1],
            "1d_rise@0.5": [rise(x, 0.5) for x in r1],
            "2d_rise@0.25": [rise2d(x, 0.25) for x in r2],
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
        figures["interpolation"] = plots.interpolation_curves(results["interpolation"], run=runs.run_name("sgd", study.seeds[0]),
                                                              colors=colors)
    for name, fig in figures.items():
        plots.save(fig, study.figures / name)
    print(f"figures: {study.figures}")
    return rows


if __name__ == "__main__":
    main()
