"""SAM-all vs SAM-ON vs SGD: test accuracy, adaptive worst-case m-sharpness and the gamma/beta shift.

The paper: "Normalization Layers Are All That Sharpness-Aware Minimization Needs" (SAM-ON,
Mueller et al., arXiv 2306.04226). Section 5.2, Table 6 (WRN-28 on CIFAR-100, 3 models per
method): SAM-ON generalizes best (84.19 +- 0.2 % vs SAM-all 83.11 +- 0.3 %, SGD 80.71 +- 0.2 %)
while being *sharper* than SAM-all and even than SGD in logit-normalized, elementwise-adaptive
worst-case l-inf m-sharpness (20 Auto-PGD steps, m=128, Appendix B.10): at rho=0.005 SGD 0.201,
SAM-all 0.139, SAM-ON 0.296. Section 5.3, Fig. 5: SAM-ON shifts the distribution of the
normalization scales gamma towards larger values; beta changes little.

This script: the runs of ``analyses/runs.py`` (MNIST-1D, resnet1d width 16 with BatchNorm, SGD,
SAM rho=0.05 on all parameters and SAM-ON rho=0.5 on the BatchNorm gamma/beta only; 3 seeds), at
each run's last epoch: test accuracy; the same sharpness as Table 6 (``landscape.sharpness``,
kind="worst", adaptive l-inf, logit-normalized, 20 Auto-PGD steps, m=128 on the first 1024
training examples, BatchNorm in eval mode) at Table 6's radii 0.003, 0.005, 0.007, perturbing all
parameters and, separately, the normalization parameters only (``params="norm"``, the question
SAM-ON raises); and gamma/beta of every BatchNorm layer (``landscape.norm_params``).

Measured on the last run (2026-12-01, 2-core CPU under load; ``python analyses/sam_on.py``, 5
epochs, seed mean +- std over 3 seeds; sharpness on 1024 training examples):

    optimizer  test acc         sharp@0.003      sharp@0.005      sharp@0.007      norm-only@0.005   mean gamma
    SGD        0.974 +- 0.004   0.0157 +- 0.0019 0.0317 +- 0.0034 0.0534 +- 0.0048 0.0044 +- 0.0006   1.003 +- 0.002
    SAM        0.970 +- 0.003   0.0139 +- 0.0018 0.0268 +- 0.0034 0.0436 +- 0.0051 0.0042 +- 0.0006   1.000 +- 0.003
    SAM-ON     0.962 +- 0.003   0.0133 +- 0.0006 0.0250 +- 0.0008 0.0397 +- 0.0014 0.0041 +- 0.0003   1.017 +- 0.002

**Table 6 does not reproduce at this scale**: SAM-ON is the *least* sharp (at every radius,
all parameters or norm-only), not the sharpest, and it generalizes worst (0.962 vs SAM 0.970,
SGD 0.974), so neither "sharper" nor "generalizes better" holds on MNIST-1D after 5 epochs; both
SAM variants are less sharp than SGD, as SAM intends. Perturbing the normalization parameters
alone gives about 1/6 of the all-parameter sharpness, with the same order. **Fig. 5's direction
does reproduce, weakly**: SAM-ON moves gamma up (channel mean 1.017 +- 0.002 vs 1.003 SGD, 1.000
SAM; every seed), while beta barely changes (means -0.005, -0.012, -0.012, spread 0.002-0.003).
Run time: 876 s for the invocation that trained SAM-ON seed 2 (92 s) and computed every analysis
(SAM-ON seeds 0 and 1 came from an earlier, interrupted invocation; SGD and SAM were the shared
runs of ``runs.py``, already trained); run again, it reuses everything and takes 19 s.
"""

from __future__ import annotations

import numpy as np
import runs

from landscape.plots import save
from landscape.plots.common import figure, style

SCRIPT = "sam_on"
OPTIMIZERS = ("sgd", "sam", "sam-on")
RHOS = (0.003, 0.005, 0.007)  # SAM-ON Table 6, 20-step radii
RHO = 0.005  # the radius of the table's norm-only column and of the scatter figure
# Fixed histogram ranges, so every layer, seed and run shares its bins and histograms add up.
GAMMA_RANGE, BETA_RANGE, BINS = (-0.5, 2.5), (-1.5, 1.5), 60


def main(argv: list[str] | None = None) -> dict:
    p = runs.parser(__doc__.splitlines()[0], optimizers=OPTIMIZERS)
    p.add_argument("--n", type=int, default=1024, help="training examples the sharpness is taken over (m=128)")
    args = p.parse_args(argv)
    study = runs.Study.from_args(args, SCRIPT)
    runs.setup_logging()
    study.train()

    quick = study.quick
    n, m = (128, 64) if quick else (args.n, 128)
    rhos = (RHO,) if quick else RHOS
    sharp = {"kind": "worst", "norm": "linf", "adaptive": True, "logit_normalize": True, "rho": list(rhos),
             "m": m, "n": n, "steps": 3 if quick else 20}
    data = {"data": {"n": n}}
    s_all = study.final_results("sharpness", {**data, "sharpness": {**sharp, "params": "all"}})
    # Norm-only at the middle radius alone: Auto-PGD dominates the run time on a 2-core CPU.
    s_norm = study.final_results("sharpness", {**data, "sharpness": {**sharp, "params": "norm", "rho": [RHO]}})
    norms = study.final_results("norm_params", {"norm_params": {"bins": BINS, "gamma_range": list(GAMMA_RANGE),
                                                            "beta_range": list(BETA_RANGE)}})

    rows = {}
    for opt in study.optimizers:
        names = [runs.run_name(opt, s) for s in study.seeds]
        row = {"test_acc": [study.history(opt, s)[-1]["test_acc"] for s in study.seeds]}
        for r in rhos:
            row[f"sharp@{r:g}"] = [float(s_all.sharpness_mean.sel(run=x, rho=r)) for x in names]
        row[f"norm-only@{RHO:g}"] = [float(s_norm.sharpness_mean.sel(run=x, rho=RHO)) for x in names]
        for param in ("gamma", "beta"):
            row[f"mean {param}"] = [channel_mean(norms.sel(run=x, param=param)) for x in names]
        row["std gamma"] = [channel_std(norms.sel(run=x, param="gamma")) for x in names]
        rows[opt] = row
    runs.print_table(f"{SCRIPT}: {study.name}, epoch {study.epochs}, {len(study.seeds)} seed(s), mean +- std; "
                     f"sharpness: adaptive worst-case l-inf, logit-normalized, m={m}, n={n}", rows, digits=4)

    study.figures.mkdir(parents=True, exist_ok=True)
    colors = {opt: runs.colors([runs.run_name(opt, 0)])[runs.run_name(opt, 0)] for opt in study.optimizers}
    save(sharpness_vs_accuracy(rows, colors), study.figures / "sharpness_vs_accuracy")
    save(sharpness_vs_rho(study, s_all, s_norm, colors), study.figures / "sharpness_vs_rho")
    save(gamma_beta(study, norms, colors), study.figures / "gamma_beta")
    runs.summary_figure(rows, study.figures / "summary", title=f"{study.name}, epoch {study.epochs}")
    print(f"figures: {study.figures}")
    return rows


def channel_mean(d) -> float:
    """Mean of a parameter over every channel of every layer (layers weighted by their size)."""
    size = d["size"].values
    return float((d["mean"].values * size).sum() / size.sum())


def channel_std(d) -> float:
    """Standard deviation over every channel of every layer, from the per-layer mean and std."""
    size, mean, std = d["size"].values, d["mean"].values, d["std"].values
    mu = (mean * size).sum() / size.sum()
    return float(np.sqrt(((std**2 + (mean - mu) ** 2) * size).sum() / size.sum()))


def sharpness_vs_accuracy(rows: dict, colors: dict):
    """SAM-ON Table 6 as a figure: one dot per seed, test accuracy against sharpness."""
    cols = [f"sharp@{RHO:g}", f"norm-only@{RHO:g}"]
    titles = ["all parameters perturbed", "normalization parameters only"]
    with style():
        fig = figure(6.4, 2.6)
        for ax, col, title in zip(fig.subplots(1, 2), cols, titles):
            for opt, row in rows.items():
                ax.plot(row[col], row["test_acc"], "o", color=colors[opt], label=opt)
            ax.set_xlabel(rf"sharpness, $\rho$ = {RHO:g}")
            ax.set_ylabel("test accuracy")
            ax.set_title(title)
        fig.suptitle(r"worst-case adaptive $\ell_\infty$ m-sharpness (logit-normalized) vs test accuracy")
        ax.legend(title="optimizer (one dot per seed)")
    return fig


def sharpness_vs_rho(study: runs.Study, s_all, s_norm, colors: dict):
    """Sharpness against the radius, seed mean +- std; solid: all parameters, open: norm only."""
    with style():
        fig = figure(3.6, 2.8)
        ax = fig.add_subplot()
        for opt in study.optimizers:
            names = [runs.run_name(opt, s) for s in study.seeds]
            for ds, face, what in ((s_all, colors[opt], "all"), (s_norm, "white", "norm only")):
                rhos = [float(r) for r in ds.rho.values]
                v = np.array([[float(ds.sharpness_mean.sel(run=x, rho=r)) for r in rhos] for x in names])
                ax.errorbar(rhos, v.mean(0), yerr=v.std(0, ddof=1) if len(names) > 1 else None, color=colors[opt],
                            marker="o", markerfacecolor=face, capsize=2.5, label=f"{opt}, {what}")
        ax.set_xlabel(r"radius $\rho$ (adaptive $\ell_\infty$)")
        ax.set_ylabel("worst-case m-sharpness")
        ax.set_title("logit-normalized, 20-step Auto-PGD" if not study.quick else "quick")
        ax.legend(fontsize=7)
    return fig


def gamma_beta(study: runs.Study, norms, colors: dict):
    """SAM-ON Fig. 5: gamma and beta of all BatchNorm channels, pooled over layers and seeds."""
    with style():
        fig = figure(6.4, 2.6)
        for ax, param in zip(fig.subplots(1, 2), ("gamma", "beta")):
            used = []  # the occupied part of the fixed range, to zoom in on
            for opt in study.optimizers:
                d = norms.sel(run=[runs.run_name(opt, s) for s in study.seeds], param=param)
                counts = d["histogram"].sum(("run", "layer")).values
                edges = d["bin_edges"].isel(run=0, layer=0).values
                outside = int(d["size"].sum()) - int(counts.sum())  # channels beyond the fixed range
                label = opt if outside == 0 else f"{opt} ({outside} channels outside the range)"
                ax.stairs(counts / counts.sum(), edges, color=colors[opt], label=label, linewidth=1.4)
                nz = np.flatnonzero(counts)
                used += [edges[nz[0]], edges[nz[-1] + 1]]
            lo, hi = min(used), max(used)
            ax.set_xlim(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo))
            ax.set_xlabel(rf"$\{param}$ (BatchNorm {'scale' if param == 'gamma' else 'shift'})")
            ax.set_ylabel("fraction of channels")
        ax.legend(title="optimizer")
        fig.suptitle(f"all BatchNorm channels of {len(study.seeds)} seed(s), epoch {study.epochs}")
    return fig


if __name__ == "__main__":
    main()
