"""SGD vs SAM vs MSAM: the feature rank over training.

The papers: "Normalization Layers Are All That Sharpness-Aware Minimization Needs" (SAM-ON,
Mueller et al., arXiv 2306.04226), Table 6, last row (WRN-28 on CIFAR-100, 3 models each,
the measure of Andriushchenko et al., "Sharpness-aware minimization leads to low-rank features",
arXiv 2305.16292): SGD 4004 +- 12, SAM 3798 +- 17, SAM-ON 3728 +- 11 - SAM lowers the rank of
the features. "Momentum-SAM: Sharpness Aware Minimization without Computational Overhead" (MSAM,
Becker et al., arXiv 2401.12033), Appendix A.5 (WRN-16-4 on CIFAR-100, the features after the
last convolutional block, before pooling): SGD 5019, SAM 4775, MSAM 3791 - MSAM lowers it more
than SAM.

This script: the runs of ``analyses/runs.py`` (MNIST-1D, resnet1d width 16 with BatchNorm; SGD,
SAM rho=0.05, MSAM rho=0.3; 3 seeds), every epoch's checkpoint: ``landscape.feature_rank`` on all
4000 non-augmented training examples (model in eval mode, sample-centred features, rank = the
leading components within 99 % of the total squared singular value, plus one) of the three stage
outputs B1, B2, B3 (640 features each; B3 is the last convolutional block before pooling, MSAM
A.5's layer) and of the pooled penultimate features (64).

Measured on the last run (2026-12-01, 2-core CPU, load ~8-13; ``python analyses/feature_rank.py``,
5 epochs, seed mean +- std over 3 seeds; test accuracy SGD 0.974 +- 0.004, SAM 0.970 +- 0.003,
MSAM 0.978 +- 0.003), the rank at the last epoch:

    layer        SGD           SAM           MSAM
    B1           343 +- 6      334 +- 21     347 +- 15
    B2           394 +- 19     390 +- 6      404 +- 21
    B3           273 +- 20     267 +- 4      275 +- 17
    penultimate  25.0 +- 2.6   24.7 +- 1.2   24.7 +- 2.1

**The finding does not reproduce at this scale.** SAM's ranks are 1-3 % below SGD's in every
layer, within one seed standard deviation; MSAM's are not lower than SGD's at all (B3: 275 vs
273), unlike MSAM A.5's clear MSAM < SAM < SGD. Over training the ranks *rise* (B3 of SGD: 106 at
epoch 1, 273 at epoch 5) and MSAM's start highest (265 at epoch 1); 5 epochs of a 28k-parameter
network on MNIST-1D are far from the long CIFAR-100 training in which the papers see the rank
fall. Run time: 320 s for the invocation that computed the 45 results (the runs already existed:
SGD, SAM and MSAM are the shared runs of ``runs.py``); run again, it reuses everything: 18 s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import runs

from landscape.batch import analyze
from landscape.plots import save
from landscape.plots.common import figure, integer_axis, style
from landscape.results import open_results

SCRIPT = "feature_rank"
OPTIMIZERS = ("sgd", "sam", "msam")
LAYERS = ("B1", "B2", "B3", "penultimate")
HEADLINE = "B3"  # the last convolutional block before pooling (MSAM A.5)


def main(argv: list[str] | None = None) -> dict:
    p = runs.parser(__doc__.splitlines()[0], optimizers=OPTIMIZERS)
    p.add_argument("--n", type=int, default=4000, help="training examples whose features are taken (MNIST-1D: all)")
    args = p.parse_args(argv)
    study = runs.Study.from_args(args, SCRIPT)
    runs.setup_logging()
    study.train()

    n = min(args.n, 256) if study.quick else args.n  # --quick: 480 training examples
    epochs = list(range(1, study.epochs + 1))
    checkpoints = [study.checkpoint(o, s, e) for o in study.optimizers for s in study.seeds for e in epochs]
    summary = analyze(checkpoints, "feature_rank", options={"data": {"n": n}, "feature_rank": {"n": n, "layers": list(LAYERS)}},
                      out=study.results, device=study.device, progress=False)
    if summary.failed:
        raise SystemExit(f"{SCRIPT}: feature_rank failed: " + "; ".join(sorted({f["error"] for f in summary.failed})))
    (hash_,) = {Path(r["result"]).stem.rsplit("-", 1)[1] for r in summary.done + summary.skipped}
    ds = open_results(study.results, "feature_rank", options_hash=hash_)
    # The rank of each (optimizer, seed) at every epoch: ranks[opt][layer] has shape (seeds, epochs).
    ranks = {opt: {layer: np.array([[rank_at(ds, runs.run_name(opt, s), e, layer) for e in epochs] for s in study.seeds])
                   for layer in LAYERS} for opt in study.optimizers}

    rows = {}
    for opt in study.optimizers:
        row = {"test_acc": [study.history(opt, s)[-1]["test_acc"] for s in study.seeds]}
        row.update({f"rank {layer}": list(ranks[opt][layer][:, -1]) for layer in LAYERS})
        row[f"rank {HEADLINE} ep1"] = list(ranks[opt][HEADLINE][:, 0])
        rows[opt] = row
    dims = {str(x): int(d) for x, d in zip(ds["layer"].values, ds["feature_dim"].isel(run=0, step=-1).values)}
    runs.print_table(f"{SCRIPT}: {study.name}, epoch {study.epochs} (and epoch 1), features of {n} training examples "
                     f"(dims {dims}), {len(study.seeds)} seed(s), mean +- std", rows, digits=4)

    colors = {opt: runs.colors([runs.run_name(opt, 0)])[runs.run_name(opt, 0)] for opt in study.optimizers}
    save(rank_vs_epoch(ranks, epochs, colors, dims), study.figures / "rank_vs_epoch")
    runs.summary_figure(rows, study.figures / "summary", title=f"{study.name}, epoch {study.epochs}")
    print(f"figures: {study.figures}")
    return rows


def rank_at(ds, run: str, epoch: int, layer: str) -> float:
    """The rank of ``layer`` in the result of ``run``'s checkpoint of ``epoch``."""
    d = ds.sel(run=run)
    step = d["step"].values[d["epoch"].values == epoch]
    if step.size != 1:
        raise SystemExit(f"{SCRIPT}: no single feature_rank result for {run} epoch {epoch} (steps {step.tolist()})")
    return float(d["rank"].sel(step=int(step[0]), layer=layer))


def rank_vs_epoch(ranks: dict, epochs: list[int], colors: dict, dims: dict):
    """One panel per layer: the rank over epochs, seed mean with a +- std band per optimizer."""
    with style():
        fig = figure(2.4 * len(LAYERS) + 0.6, 2.6)
        axes = fig.subplots(1, len(LAYERS))
        for ax, layer in zip(axes, LAYERS):
            for opt, by_layer in ranks.items():
                r = by_layer[layer]
                mean, std = r.mean(0), r.std(0, ddof=1) if r.shape[0] > 1 else np.zeros(r.shape[1])
                ax.plot(epochs, mean, marker="o", color=colors[opt], label=opt)
                ax.fill_between(epochs, mean - std, mean + std, color=colors[opt], alpha=0.2, linewidth=0)
            ax.set_title(f"{layer} (d = {dims[layer]})")
            ax.set_xlabel("epoch")
            integer_axis(ax)
        axes[0].set_ylabel("feature rank (99 % of sum s^2)")
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", title="optimizer")
    return fig


if __name__ == "__main__":
    main()
