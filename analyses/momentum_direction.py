"""The momentum direction: its cosine with the gradient, the loss along it, its curvature.

The paper: "Momentum-SAM: Sharpness Aware Minimization without Computational Overhead" (Becker
et al., arXiv 2401.12033). Section 2.4 and 4.1 (Fig. 2C, Appx. A.3, Figs. A.2-A.4): the cosine
between the momentum buffer ``v`` (before its update) and the gradient is *negative* during
training - the SGD step overshoots the minimum along ``v`` - so the loss rises along ``-v``
(MSAM's perturbation ``w - rho v/||v||``), and with a decaying learning rate the cosine goes to
0 at the end. Appx. A.4 (Fig. A.8, WRN-16-4 on CIFAR-100): the curvature ``u^T H u`` along
``u = v/||v||`` is larger than along random directions for SGD, SAM and MSAM at every epoch;
all curvatures rise at the end of SGD training; SAM and MSAM lower the curvature most along
their own perturbation direction.

This script: the default runs of ``analyses/runs.py`` (MNIST-1D, resnet1d width 16 with
BatchNorm, SGD, SAM rho=0.05 and MSAM rho=0.3, 3 seeds) at *every* epoch's checkpoint, on the
first 512 training examples (one batch, BatchNorm in eval mode): ``landscape.momentum_curvature``
(cosine, exact ``u^T H u`` along momentum, gradient and 3 seeded random directions) and, at the
last epoch, 1-D filter-normalized slices along the momentum direction and along a random one
(the loss rise at ``alpha = -0.2``, i.e. along ``-v``, and at ``+0.2``). One difference to the
paper: it measures on the *next* batch right after a step; here the checkpoint's momentum meets
the gradient of 512 training examples at the end of an epoch.

Measured on the last run (2026-12-01, 2-core CPU shared with other jobs, load average 12-15;
8.3 min with the training of the 3 MSAM runs (1.7 min) on reused SGD and SAM runs), seed mean +-
std over seeds 0, 1, 2; ``cos_mean_epochs`` over epochs 1-5, ``mom>rand`` the share of epochs
1-5 with the momentum curvature above every random direction's, the rest at epoch 5:

    run   test_acc         cos_mean_epochs   cos_last          curv_mom      curv_grad    curv_rand          mom>rand  rise(-mom)   rise(+mom)   rise(rand)
    sgd   0.974 +- 0.0035  -0.0542 +- 0.062  0.17 +- 0.13      4.07 +- 0.36  29.1 +- 20   0.00638 +- 0.0012  1 +- 0    14.5 +- 1.9  30.1 +- 6.6  0.77 +- 0.58
    sam   0.97 +- 0.0025   -0.0865 +- 0.02   0.112 +- 0.059    2.38 +- 1.2   22.2 +- 3.4  0.0055 +- 0.00074  1 +- 0    18.9 +- 4.7  36 +- 37     0.371 +- 0.18
    msam  0.978 +- 0.0031  -0.0857 +- 0.055  0.0471 +- 0.0092  1.68 +- 0.56  19.7 +- 6.6  0.00701 +- 0.0011  1 +- 0    14.4 +- 0.5  8.44 +- 4.7  0.382 +- 0.082

Reproduced: the curvature along momentum is far above random directions at every epoch of
every run (240-640x at epoch 5; ``figures/momentum_direction/mnist1d-resnet1d/over_training.png``),
and the loss rises 20-100x faster along momentum than along a random direction of the same
filter-normalized length; MSAM has the lowest curvature along momentum, its own perturbation
direction (1.68 vs 4.07 for SGD). Partly reproduced: the cosine is negative while the learning
rate is large (31 of the 36 checkpoints of epochs 1-4), but at the last epoch, with the learning
rate decayed to 0, it is positive for all 9 runs (0.05-0.25; the paper: it goes to 0). Not
reproduced: the loss rises more along ``-v`` than along ``+v`` only for MSAM (14.4 vs 8.4);
for SGD and SAM the ``+v`` side is steeper at the last epoch, as their positive cosine says; SGD's
curvatures fall over the 5 epochs instead of rising at the end; SAM, not MSAM, has the lowest
random-direction curvature. MSAM has the best test accuracy here (0.978 vs 0.974 for SGD).
"""

from __future__ import annotations

import numpy as np
import runs

from landscape import plots
from landscape.batch import analyze
from landscape.results import open_results

SCRIPT = "momentum_direction"
SLICE_GRID = "-1:1:11"
ALPHA = 0.2  # the rises are read here: filter-normalized momentum is steep (at 0.5 the loss is 100s)


def rise(ds, alpha: float) -> float:
    """Loss rise over the centre at ``alpha`` of a 1-D slice."""
    return float(ds.loss.sel(alpha=alpha, method="nearest") - ds.loss.sel(alpha=0.0))


def over_epochs(ds, study, optimizer: str, value) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, seeds x epochs array) of ``value(run_ds)`` for every seed of ``optimizer``."""
    rows = []
    for s in study.seeds:
        r = ds.sel(run=runs.run_name(optimizer, s))
        r = r.isel(step=np.flatnonzero(np.asarray(r["epoch"]) >= 0))  # steps this run has
        rows.append(np.asarray(value(r), dtype=float))
    epochs = np.asarray(ds.sel(run=runs.run_name(optimizer, study.seeds[0]))["epoch"])
    return epochs[epochs >= 0], np.vstack(rows)


def figure_over_training(ds, study, path) -> list:
    """Cosine(momentum, gradient) and the curvature along momentum / gradient / random over
    epochs: seed mean (line) and the seeds' range (band), one color per optimizer."""
    from landscape.plots.common import figure, integer_axis, style

    random = [d for d in ds.direction.values if str(d).startswith("random")]
    panels = {
        "cos(momentum, gradient)": lambda r: r.cosine,
        "curvature: momentum": lambda r: r.curvature.sel(direction="momentum"),
        "curvature: gradient": lambda r: r.curvature.sel(direction="gradient"),
        "curvature: random (mean)": lambda r: r.curvature.sel(direction=random).mean("direction"),
    }
    colors = runs.colors([runs.run_name(o, 0) for o in study.optimizers])
    with style():
        fig = figure(10.0, 2.6)
        axes = fig.subplots(1, len(panels), sharex=True)
        for ax, (title, value) in zip(axes, panels.items()):
            positive = True
            for opt in study.optimizers:
                epochs, v = over_epochs(ds, study, opt, value)
                positive &= bool((v > 0).all())
                c = colors[runs.run_name(opt, 0)]
                ax.plot(epochs, v.mean(0), "o-", color=c, label=opt)
                ax.fill_between(epochs, v.min(0), v.max(0), color=c, alpha=0.2, linewidth=0)
            ax.set_title(title)
            ax.set_xlabel("epoch")
            integer_axis(ax)
            if title.startswith("cos("):
                ax.axhline(0.0, color="0.5", linewidth=0.8)
            elif positive:  # curvatures span decades between directions
                ax.set_yscale("log")
        axes[0].set_ylabel("cosine")
        axes[1].set_ylabel("u^T H u (nats)")
        axes[0].legend()
    return plots.save(fig, path)


def main(argv: list[str] | None = None) -> dict:
    p = runs.parser(__doc__.splitlines()[0], optimizers=("sgd", "sam", "msam"))
    p.add_argument("--n", type=int, default=512, help="training examples (one full batch)")
    args = p.parse_args(argv)
    study = runs.Study.from_args(args, SCRIPT)
    runs.setup_logging()
    study.train()
    q = study.quick
    n = min(args.n, 128) if q else args.n
    every_epoch = [study.checkpoint(o, s, e) for o in study.optimizers for s in study.seeds
                   for e in range(1, study.epochs + 1)]
    analyze(every_epoch, "momentum", out=study.results / "curvature", device=study.device, progress=False,
            options={"data": {"n": n}, "momentum": {"random_directions": 3, "batch_size": n}})
    curv = open_results(study.results / "curvature", "momentum")

    slices = {}
    for kind in ("momentum", "random"):
        analyze(study.final_checkpoints(), "slice", out=study.results / f"slice_{kind}", device=study.device,
                progress=False, options={"data": {"n": n}, "slice": {
                    "kind": kind, "ndim": 1, "grid": SLICE_GRID, "batch_size": n}})
        slices[kind] = open_results(study.results / f"slice_{kind}", "slice").isel(step=-1)

    last = curv.isel(step=-1)
    random = [d for d in curv.direction.values if str(d).startswith("random")]
    rows = {}
    for opt in study.optimizers:
        names = [runs.run_name(opt, s) for s in study.seeds]
        at = [last.sel(run=r) for r in names]
        _, cos = over_epochs(curv, study, opt, lambda r: r.cosine)
        _, above = over_epochs(curv, study, opt, lambda r: r.curvature.sel(direction="momentum")
                               > r.curvature.sel(direction=random).max("direction"))
        rows[opt] = {
            "test_acc": [study.history(opt, s)[-1]["test_acc"] for s in study.seeds],
            "cos_mean_epochs": list(cos.mean(1)),
            "cos_last": [float(x.cosine) for x in at],
            "curv_mom": [float(x.curvature.sel(direction="momentum")) for x in at],
            "curv_grad": [float(x.curvature.sel(direction="gradient")) for x in at],
            "curv_rand": [float(x.curvature.sel(direction=random).mean()) for x in at],
            "mom>rand": list(above.mean(1)),  # share of epochs: momentum above every random direction
            "rise(-mom)": [rise(slices["momentum"].sel(run=r), -ALPHA) for r in names],
            "rise(+mom)": [rise(slices["momentum"].sel(run=r), ALPHA) for r in names],
            "rise(rand)": [0.5 * (rise(slices["random"].sel(run=r), -ALPHA) + rise(slices["random"].sel(run=r), ALPHA))
                           for r in names],
        }
    runs.print_table(f"{SCRIPT}: {study.name}, epochs 1-{study.epochs} (curvature, cosine) and epoch {study.epochs} "
                     f"(rest), {n} training examples, {len(study.seeds)} seed(s), mean +- std; "
                     f"rise = loss rise at alpha={ALPHA:g} of a filter-normalized 1-D slice", rows)

    colors = runs.colors(slices["momentum"].run.values)
    figure_over_training(curv, study, study.figures / "over_training")
    for kind, ds in slices.items():
        plots.save(plots.slice_curves(ds, colors=colors), study.figures / f"slice_{kind}")
    print(f"figures: {study.figures}")
    return rows


if __name__ == "__main__":
    main()
