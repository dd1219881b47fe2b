"""``make demo``: the main job on MNIST-1D, end to end.

Trains SGD, SAM, SAM-ON and MSAM (the three papers' optimizers) on MNIST-1D, analyses the
checkpoints (Hessian spectrum, adaptive worst-case l-inf m-sharpness with logit normalization as
in SAM-ON Appendix B.10, curvature along the momentum direction as in MSAM Appendix A.4,
gamma/beta distributions), draws the figures and prints one table.
Everything is resumable: running it again reuses finished runs and results.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from landscape.config import MSAMConfig, SAMConfig, TrainConfig

log = logging.getLogger("landscape")

# lr/rho chosen for MNIST-1D with resnet1d: SAM rho as SAM's CIFAR default, SAM-ON's larger
# radius because the whole radius goes to the few normalization parameters (SAM-ON Table 7).
RUNS: dict[str, dict] = {
    "sgd": {},
    "sam": {"sam": SAMConfig(variant="sam", rho=0.05)},
    "sam-on": {"sam": SAMConfig(variant="sam", rho=0.5, mask="norm")},
    "msam": {"msam": MSAMConfig(rho=0.3)},
}


def demo_configs(out: Path, *, epochs: int | None = None, quick: bool = False) -> dict[str, TrainConfig]:
    """The training configs of the demo (``quick``: a tiny version for tests)."""
    base = dict(dataset="mnist1d", model="resnet1d", model_kwargs={"width": 32}, epochs=epochs or 5,
                lr=0.1, batch_size=128, warmup_epochs=1.0, weight_decay=5e-4, seed=0, save_every=epochs or 5)
    if quick:
        base.update(dataset_kwargs={"num_samples": 600}, model_kwargs={"width": 4}, epochs=epochs or 2,
                    batch_size=100)
    return {name: TrainConfig(out=str(out / "checkpoints" / name), **base, **kw) for name, kw in RUNS.items()}


def demo_analysis_options(quick: bool = False) -> dict:
    """Options of the demo's analyses (sharpness as SAM-ON B.10, smaller n for speed)."""
    n = 256 if quick else 1024
    n_hessian = 256 if quick else 512  # about 250 HVPs per checkpoint; 512 samples keep them cheap
    return {
        "data": {"n": n},
        "hessian": {"top_k": 5, "tol": 1e-3, "max_samples": n_hessian, "batch_size": n_hessian,
                    "trace_samples": 30 if quick else 45, "slq_runs": 3 if quick else 5,
                    "slq_steps": 20 if quick else 40},
        "sharpness": {"kind": "worst", "norm": "linf", "adaptive": True, "logit_normalize": True,
                      "rho": [0.001, 0.002, 0.004] if not quick else [0.002], "m": 128, "n": n,
                      "steps": 20 if not quick else 5},
        "momentum": {"random_directions": 3, "batch_size": n},
    }


def demo(out: Path = Path("demo"), *, epochs: int | None = None, quick: bool = False) -> dict:
    """Train, analyse, plot; print a summary table and return it as a dict."""
    from landscape.batch import analyze
    from landscape.plots.cli import plot_results
    from landscape.results import open_results, read_json
    from landscape.trainer import train

    out = Path(out)
    t0 = time.monotonic()
    runs = {}
    for name, cfg in demo_configs(out, epochs=epochs, quick=quick).items():
        t = time.monotonic()
        runs[name] = train(cfg)
        log.info("demo: trained %s in %.0f s", name, time.monotonic() - t)
    t_train = time.monotonic() - t0

    # The final checkpoint of each run (save_every = epochs), one task per core.
    summary = analyze(out / "checkpoints", ["hessian", "sharpness", "momentum", "norm_params"],
                      options=demo_analysis_options(quick), out=out / "results",
                      workers=None if quick else min(2, os.cpu_count() or 1))
    if summary.failed:
        for f in summary.failed:
            log.error("demo: %s on %s failed: %s", f["analysis"], f["checkpoint"], f["error"])
    t_analyze = time.monotonic() - t0 - t_train

    _, failures = plot_results(out / "results", out / "figures", runs=out / "checkpoints")
    for failure in failures:
        log.error("demo: figure failed: %s", failure)

    table = {}
    hess = open_results(out / "results", "hessian")
    sharp = open_results(out / "results", "sharpness")
    mom = open_results(out / "results", "momentum")
    for name, run in runs.items():
        h = read_json(run / "run.json")["history"][-1]
        hs = hess.sel(run=name).isel(step=-1)
        sh = sharp.sel(run=name).isel(step=-1)
        mo = mom.sel(run=name).isel(step=-1)
        table[name] = {
            "test_acc": h["test_acc"],
            "train_loss": h["train_loss"],
            "lambda_max": float(hs["eigenvalues"].isel(k=0)),
            "trace": float(hs["trace"]),
            "sharpness": float(sh["sharpness_mean"].isel(rho=-1)),
            "curv_momentum": float(mo["curvature"].sel(direction="momentum")),
            "curv_random": float(mo["curvature"].sel(direction=[d for d in mo.direction.values if d.startswith("random")]).mean()),
        }
    rho = float(sharp["rho"][-1])
    print(f"\nlandscape demo: MNIST-1D, resnet1d, {len(runs)} optimizers "
          f"(train {t_train:.0f} s, analyse {t_analyze:.0f} s, total {time.monotonic() - t0:.0f} s)")
    print(f"{'run':8s} {'test acc':>9s} {'train loss':>11s} {'lambda_max':>11s} {'trace':>10s} "
          f"{'sharp@' + format(rho, 'g'):>12s} {'curv(mom)':>10s} {'curv(rand)':>11s}")
    for name, row in table.items():
        print(f"{name:8s} {row['test_acc']:9.4f} {row['train_loss']:11.4f} {row['lambda_max']:11.3f} "
              f"{row['trace']:10.2f} {row['sharpness']:12.4f} {row['curv_momentum']:10.3f} {row['curv_random']:11.4f}")
    print(f"\ncheckpoints: {out / 'checkpoints'}   results: {out / 'results'}   figures: {out / 'figures'}")
    return table
