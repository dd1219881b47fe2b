"""``make demo``: the main job on MNIST-1D, end to end, in minutes on a 2-core CPU.

Trains SGD, SAM, SAM-ON and MSAM (the three papers' optimizers; same seed, data order and
budget) on MNIST-1D with ``resnet1d``, writing a checkpoint every epoch, then analyses the
checkpoints with every analysis that applies:

* on the checkpoints of epochs 4 and 8 of 8 (the curves over training; ``--analyse-epochs``
  chooses others, ``all`` every epoch): the Hessian spectrum (top
  eigenvalues by Lanczos, the trace deflated by the Lanczos basis, SLQ density), adaptive worst-case l-inf m-sharpness
  with logit normalization (SAM-ON Appendix B.10), the curvature along the momentum, gradient and
  random directions and the momentum-gradient cosine (MSAM Appendix A.4), the gamma/beta
  statistics of the normalization layers, and the feature rank (SAM-ON Table 6);
* on the last checkpoint of each run: a 2-D filter-normalized random slice of the loss
  (Li et al. 2018; SAM Fig. 1);
* adversarial robustness only where the inputs have a pixel range (images in [0, 1] or
  standardized images): MNIST-1D's are real-valued signals, so it is skipped with the reason
  logged.

Then it draws every figure, prints one table (test accuracy, sharpness, lambda_max, trace,
feature rank, mean gamma, momentum cosine) with the figures' paths, and writes it to
``demo_table.json`` beside the results. Layout (the current folder by default):

* ``checkpoints/demo/<run>/epoch_NNNN.pt`` (and ``run.json``, ``last.pt``),
* ``results/demo/<run>/<checkpoint>/<analysis>-<hash>.nc``, ``summary.json``, ``demo_table.json``,
* ``figures/demo/<figure>.png``.

``out=DIR`` puts them in ``DIR/checkpoints``, ``DIR/results`` and ``DIR/figures`` instead: the
layout of earlier versions, so ``landscape demo --out demo`` finds what they wrote.

Everything resumes: a second run reuses finished training runs and results (and says how
many) and computes only what is missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

# The analyses of every analysed epoch, and those of each run's last checkpoint only.
EPOCH_ANALYSES = ("hessian", "sharpness", "momentum", "norm_params", "feature_rank")
FINAL_ANALYSES = ("slice",)

# The figures of the README gallery (``landscape demo --gallery DIR``), with what each shows.
GALLERY: dict[str, str] = {
    "training_curves": "training and test loss and accuracy of the four optimizers per epoch",
    "sharpness_accuracy": "test accuracy against adaptive worst-case sharpness, one point per run "
                          "(SAM-ON Table 6 as a figure)",
    "hessian_eigenvalues": "the top-5 Hessian eigenvalues over training (Lanczos; lambda_1 bold)",
    "hessian_trace": "the Hessian trace over training (deflated by the Lanczos basis, with its standard error)",
    "hessian_density": "the Hessian's spectral density at the last checkpoint (stochastic Lanczos quadrature)",
    "sharpness_step": "adaptive worst-case l-inf m-sharpness over training, one panel per radius rho",
    "sharpness_rho": "adaptive worst-case l-inf m-sharpness against rho at the last checkpoint",
    "momentum_step": "curvature along the momentum, the gradient and random directions, and the "
                     "momentum-gradient cosine, over training (MSAM Appendix A.4)",
    "momentum_directions": "the same curvatures at the last checkpoint, one group of bars per run",
    "feature_rank_step": "the feature rank of each stage and of the penultimate layer over training",
    "norm_params_hist": "histograms of the normalization layers' gamma and beta at the last checkpoint",
    "slice_contour": "a 2-D filter-normalized random slice of the training loss around each final model",
}
GALLERY_MAX_BYTES = 300_000


@dataclass(frozen=True)
class DemoLayout:
    """Where the demo writes: run folders, results, figures."""

    checkpoints: Path
    results: Path
    figures: Path

    @classmethod
    def at(cls, out: str | os.PathLike | None = None) -> DemoLayout:
        """``checkpoints/demo``, ``results/demo``, ``figures/demo`` under the current folder
        (``out=None``), else ``out/checkpoints``, ``out/results``, ``out/figures``.

        Example:
            >>> DemoLayout.at().results.as_posix(), DemoLayout.at("demo").results.as_posix()
            ('results/demo', 'demo/results')
        """
        if out is None:
            return cls(Path("checkpoints/demo"), Path("results/demo"), Path("figures/demo"))
        out = Path(out)
        return cls(out / "checkpoints", out / "results", out / "figures")


@dataclass(frozen=True)
class DemoBudget:
    """The demo's sizes: training, which checkpoints get which analysis, and each analysis' budget.

    ``analyse_epochs``: the epochs whose checkpoints get :data:`EPOCH_ANALYSES` (``None`` =
    every epoch); the last epoch is always included. ``n``: training examples the analyses see
    (the first ``n``); ``hessian_n``, ``sharpness_n``, ``slice_n``: the first of those that the
    Hessian, the sharpness and the slice use (they dominate the cost).

    The defaults fit ``make demo`` (install included) into about 10 minutes on an idle 2-core
    CPU: measured CPU seconds per checkpoint (one thread, width 16): Hessian 18 (85 HVPs on 512
    examples), sharpness 8.5, momentum 3, feature rank 0.7, gamma/beta 0.3; a 13 x 13 slice 6;
    training about 3 per epoch and run. Every second epoch (``analyse_epochs=(2, 4, 6, 8)``)
    doubles the analyses' part.
    """

    epochs: int = 8
    width: int = 16
    batch_size: int = 128
    num_samples: int = 5000
    analyse_epochs: tuple[int, ...] | None = (4, 8)
    n: int = 1024
    hessian_n: int = 512
    top_k: int = 5
    lanczos_tol: float = 1e-3
    trace_samples: int = 30
    slq_runs: int = 2
    slq_steps: int = 20
    sharpness_n: int = 512
    rho: tuple[float, ...] = (0.001, 0.002, 0.004)
    m: int = 128
    apgd_steps: int = 20
    random_directions: int = 3
    slice_grid: str = "-1:1:13"
    slice_n: int = 512
    workers: int = 2

    @classmethod
    def quick(cls) -> DemoBudget:
        """A tiny budget for tests: the same code paths (two worker processes) in seconds, every epoch analysed."""
        return cls(epochs=2, width=4, batch_size=100, num_samples=600, analyse_epochs=None, n=200,
                   hessian_n=100, top_k=2, lanczos_tol=1e-2, trace_samples=6, slq_runs=1, slq_steps=8, sharpness_n=100,
                   rho=(0.002, 0.004), m=50, apgd_steps=3, random_directions=1, slice_grid="-1:1:4",
                   slice_n=100)

    def epochs_analysed(self) -> list[int]:
        """The epochs whose checkpoints get the per-epoch analyses (sorted, the last included)."""
        wanted = range(1, self.epochs + 1) if self.analyse_epochs is None else self.analyse_epochs
        return sorted({e for e in wanted if 1 <= e <= self.epochs} | {self.epochs})


def demo_configs(layout: DemoLayout, budget: DemoBudget) -> dict[str, TrainConfig]:
    """The training configs of the demo's four runs (same seed, data, budget; a checkpoint every epoch).

    Example:
        >>> cfgs = demo_configs(DemoLayout.at("/tmp/d"), DemoBudget.quick())
        >>> list(cfgs), cfgs["sam-on"].sam.mask, cfgs["sgd"].save_every
        (['sgd', 'sam', 'sam-on', 'msam'], 'norm', 1)
    """
    base = dict(dataset="mnist1d", dataset_kwargs={"num_samples": budget.num_samples}, model="resnet1d",
                model_kwargs={"width": budget.width}, epochs=budget.epochs, lr=0.1, batch_size=budget.batch_size,
                warmup_epochs=1.0, weight_decay=5e-4, seed=0, save_every=1)
    return {name: TrainConfig(out=str(layout.checkpoints / name), **base, **kw) for name, kw in RUNS.items()}


def demo_analysis_options(budget: DemoBudget) -> dict[str, dict[str, Any]]:
    """Options of the demo's analyses (``landscape analyze`` tables), from the budget.

    Example:
        >>> demo_analysis_options(DemoBudget())["sharpness"]["kind"]
        'worst'
    """
    return {
        "data": {"n": budget.n},
        "hessian": {"top_k": budget.top_k, "tol": budget.lanczos_tol, "max_samples": budget.hessian_n,
                    "batch_size": budget.hessian_n, "trace_samples": budget.trace_samples,
                    "slq_runs": budget.slq_runs, "slq_steps": budget.slq_steps},
        "sharpness": {"kind": "worst", "norm": "linf", "adaptive": True, "logit_normalize": True,
                      "rho": list(budget.rho), "m": budget.m, "n": budget.sharpness_n, "steps": budget.apgd_steps},
        "momentum": {"random_directions": budget.random_directions, "batch_size": budget.n},
        "feature_rank": {"n": budget.n, "layers": "B1,B2,B3,penultimate", "batch_size": budget.n},
        "slice": {"kind": "random", "ndim": 2, "normalization": "filter", "grid": budget.slice_grid,
                  "max_samples": budget.slice_n, "batch_size": budget.slice_n, "seed": 0},
    }


def pixel_range_reason(dataset: Any) -> str | None:
    """Why adversarial robustness does not apply to ``dataset`` (``None``: it applies).

    Robust accuracy is measured for radii in pixel units, so the inputs must be images in
    [0, 1] or images standardized with a known mean and std (as the zoo loads CIFAR).

    Example:
        >>> from landscape.data import get_dataset
        >>> pixel_range_reason(get_dataset("synthetic", "train"))[:40]
        'its inputs, shape (40,), are not images '
    """
    from landscape.analyses.robustness import standardization_of

    shape = tuple(getattr(dataset, "input_shape", ()) or ())
    name = getattr(dataset, "name", type(dataset).__name__)
    if standardization_of(dataset) is not None:
        return None
    if len(shape) == 3:
        x = getattr(dataset, "x", None)
        if x is not None and float(x.min()) >= 0.0 and float(x.max()) <= 1.0:
            return None
        return f"its images, shape {shape}, are neither in [0, 1] nor standardized with a known mean/std"
    return (f"its inputs, shape {shape}, are not images with a pixel range ({name} is real-valued), "
            "so a radius in pixel units means nothing")


def _train_one(cfg: TrainConfig) -> dict[str, Any]:
    """Train one run in a worker process; errors come back as text (a raise would kill the worker)."""
    from landscape.trainer import train

    t0 = time.monotonic()
    try:
        train(cfg, progress=False)
        return {"run": cfg.out, "ok": True, "seconds": time.monotonic() - t0}
    except Exception as e:  # noqa: BLE001 - reported by the driver, naming the run
        return {"run": cfg.out, "ok": False, "error": f"{type(e).__name__}: {e}", "seconds": time.monotonic() - t0}


def _trained_epochs(run: Path) -> int:
    """Epochs a run folder has finished (0: none, or no readable run.json)."""
    from landscape.results import read_json

    try:
        hist = read_json(run / "run.json").get("history") or []
    except (OSError, ValueError, AttributeError):
        return 0
    return int(hist[-1]["epoch"]) if hist and (run / "last.pt").exists() else 0


def train_runs(configs: dict[str, TrainConfig], workers: int) -> tuple[dict[str, Path], list[str]]:
    """Train the runs that are not finished (in ``workers`` processes of one thread each when
    ``workers`` > 1: tiny models use two processes better than two threads); returns the run
    folders and the names of the runs reused as they were."""
    from landscape.pool import WorkerDeath, run_isolated
    from landscape.trainer import TrainingError

    runs = {name: Path(cfg.out) for name, cfg in configs.items()}
    reused = [n for n, cfg in configs.items() if _trained_epochs(runs[n]) >= cfg.epochs]
    todo = [cfg for n, cfg in configs.items() if n not in reused]
    for name in reused:
        log.info("demo: %s: reusing the finished run in %s", name, runs[name])
    if workers > 1 and len(todo) > 1:
        items = [dataclasses.replace(cfg, threads=1) for cfg in todo]
        results = (rec for _, rec, _ in run_isolated(_train_one, items, min(workers, len(items))))
    else:
        results = (_train_one(cfg) for cfg in todo)
    errors = []
    for rec in results:
        if isinstance(rec, WorkerDeath):
            errors.append(f"a training worker died: {rec.detail}")
        elif not rec["ok"]:
            errors.append(f"{rec['run']}: {rec['error']}")
        else:
            log.info("demo: trained %s in %.0f s", rec["run"], rec["seconds"])
    if errors:
        raise TrainingError("demo: training failed: " + "; ".join(errors))
    return runs, reused


def last_results(summaries, runs: dict[str, Path], last_epoch: int) -> dict[tuple[str, str], Path]:
    """``(run, analysis) -> result file`` of each run's last checkpoint, from the batch summaries
    (done or skipped in this run: the results of these options, not of earlier ones)."""
    stem = f"epoch_{last_epoch:04d}"
    found: dict[tuple[str, str], Path] = {}
    for s in summaries:
        for rec in (*s.done, *s.skipped):
            if rec["run"] in runs and Path(rec["checkpoint"]).stem == stem:
                found[rec["run"], rec["analysis"]] = Path(rec["result"])
    return found


def _one(ds):
    """A result file's dataset without its length-1 ``run`` and ``step`` dimensions."""
    return ds.isel({d: 0 for d in ("run", "step") if d in ds.dims})


def _first_group(da):
    # Per-group Hessian results (a `group` dimension) report the whole model's group first.
    return da.isel(group=0) if "group" in da.dims else da


def summary_table(runs: dict[str, Path], files: dict[tuple[str, str], Path]) -> dict[str, dict]:
    """One row per run at its last checkpoint: test accuracy and every analysis' headline number
    (read from the one result file of that checkpoint, not the whole folder)."""
    import numpy as np

    from landscape.results import read_json, read_result

    table: dict[str, dict] = {}
    for name, run in runs.items():
        hist = read_json(run / "run.json")["history"][-1]
        row: dict[str, Any] = {"epoch": int(hist["epoch"]), "test_acc": float(hist["test_acc"])}
        get = lambda analysis, name=name: _one(read_result(files[name, analysis])) if (name, analysis) in files else None  # noqa: E731
        if (sh := get("sharpness")) is not None:
            row["sharpness"] = float(sh["sharpness_mean"].isel(rho=-1))
            row["rho"] = float(sh["rho"].isel(rho=-1))
        if (hs := get("hessian")) is not None:
            row["lambda_max"] = float(_first_group(hs["eigenvalues"]).isel(k=0))
            row["trace"] = float(_first_group(hs["trace"]))
        if (fr := get("feature_rank")) is not None:
            row["feature_rank"] = int(fr["rank"].sel(layer="penultimate"))
        if (npar := get("norm_params")) is not None:
            mean, size = npar["mean"].sel(param="gamma").values, npar["size"].values
            row["mean_gamma"] = float(np.sum(mean * size) / np.sum(size))  # over all channels
        if (mo := get("momentum")) is not None:
            row["momentum_cosine"] = float(mo["cosine"])
        table[name] = row
    return table


COLUMNS = (("test_acc", "test acc", "{:.4f}"), ("sharpness", "sharpness", "{:.4f}"),
           ("lambda_max", "lambda_max", "{:.2f}"), ("trace", "trace", "{:.1f}"),
           ("feature_rank", "feat rank", "{:d}"), ("mean_gamma", "mean gamma", "{:.4f}"),
           ("momentum_cosine", "mom cos", "{:+.3f}"))


def format_table(table: dict[str, dict]) -> str:
    """The summary table as printed (missing values as ``-``)."""
    rho = next((row["rho"] for row in table.values() if "rho" in row), None)
    head = f"{'run':8s}" + "".join(f" {label:>11s}" for _, label, _ in COLUMNS)
    lines = [head]
    for name, row in table.items():
        cells = []
        for key, _, fmt in COLUMNS:
            value = row.get(key)
            ok = value is not None and not (isinstance(value, float) and math.isnan(value))
            cells.append(f" {fmt.format(value) if ok else '-':>11s}")
        lines.append(f"{name:8s}" + "".join(cells))
    if rho is not None:
        lines.append(f"sharpness: adaptive worst-case l-inf m-sharpness at rho={rho:g} (SAM-ON B.10); "
                     "lambda_max, trace: Hessian of the training loss; feat rank: penultimate layer, 99 %")
    return "\n".join(lines)


def _previous_figures(layout: DemoLayout) -> list[Path] | None:
    """The figures the last demo run on this layout drew, when they all still exist."""
    from landscape.results import read_json

    try:
        listed = [Path(p) for p in read_json(layout.results / "demo_table.json")["figures"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return listed if listed and all(p.exists() for p in listed) else None


def draw_figures(layout: DemoLayout, formats=("png",)) -> tuple[list[Path], list[str]]:
    """Every figure ``landscape plot`` draws from the demo's results and runs (quietly)."""
    from landscape.plots.cli import plot_results

    with contextlib.redirect_stdout(io.StringIO()):  # plot_results prints each path; the table lists them
        written, failures = plot_results(layout.results, layout.figures, runs=layout.checkpoints, formats=formats)
    return written, failures


def demo(out: str | os.PathLike | None = None, *, quick: bool = False, epochs: int | None = None,
         analyse_epochs: tuple[int, ...] | str | None = None, budget: DemoBudget | None = None,
         gallery: str | os.PathLike | None = None, redraw: bool = False) -> dict[str, Any]:
    """Train, analyse, plot; print the summary table and return it.

    Args:
        out: ``None``: ``checkpoints/demo``, ``results/demo``, ``figures/demo``; a folder:
            its ``checkpoints/``, ``results/``, ``figures/`` (see :class:`DemoLayout`).
        quick: the tiny budget of the tests (:meth:`DemoBudget.quick`).
        epochs: override the budget's epochs.
        analyse_epochs: override the epochs that get the per-epoch analyses (``"all"``: every
            epoch; the last is always included).
        budget: the sizes (default :class:`DemoBudget` or its quick form).
        gallery: also copy the :data:`GALLERY` figures there as PNGs (the README's gallery).
        redraw: draw the figures even when nothing new was computed (after a change of the
            plotting code); otherwise a run that computed nothing reuses the figures it finds.

    Returns:
        ``{"table": {run: row}, "figures": [paths], "reused": {...}, "seconds": {...}}``.
    """
    from landscape.batch import analyze
    from landscape.data import get_dataset

    budget = budget or (DemoBudget.quick() if quick else DemoBudget())
    if epochs is not None:
        budget = dataclasses.replace(budget, epochs=epochs)
    if analyse_epochs is not None:
        budget = dataclasses.replace(budget, analyse_epochs=None if analyse_epochs == "all" else tuple(analyse_epochs))
    layout = DemoLayout.at(out)
    if out is None and Path("demo/checkpoints").is_dir():
        log.info("demo: demo/ holds the output of an earlier version's layout; it is not used "
                 "(run `landscape demo --out demo` to reuse it)")
    t0 = time.monotonic()
    configs = demo_configs(layout, budget)
    runs, runs_reused = train_runs(configs, budget.workers)
    t_train = time.monotonic() - t0

    options = demo_analysis_options(budget)
    analysed = budget.epochs_analysed()
    per_epoch = [run / f"epoch_{e:04d}.pt" for run in runs.values() for e in analysed]
    final = [run / f"epoch_{budget.epochs:04d}.pt" for run in runs.values()]
    wanted = list(EPOCH_ANALYSES)
    robust_reason = pixel_range_reason(get_dataset("mnist1d", "train", num_samples=budget.num_samples))
    if robust_reason is None:
        wanted.append("robustness")
    else:
        log.info("demo: robustness skipped: MNIST-1D: %s", robust_reason)
    workers = budget.workers if budget.workers > 1 else None
    summaries = [
        analyze(per_epoch, wanted, options=options, out=layout.results, workers=workers,
                progress=not quick),
        analyze(final, list(FINAL_ANALYSES), options=options, out=layout.results, workers=workers,
                progress=not quick),
    ]
    failed = [f for s in summaries for f in s.failed]
    for f in failed:
        log.error("demo: %s on %s failed: %s", f["analysis"], f["checkpoint"], f["error"])
    done = sum(len(s.done) for s in summaries)
    skipped = sum(len(s.skipped) for s in summaries)
    t_analyse = time.monotonic() - t0 - t_train

    previous = _previous_figures(layout)
    figures_reused = not redraw and not done and len(runs_reused) == len(runs) and previous is not None
    if figures_reused:
        figures, fig_failures = previous, []
    else:
        figures, fig_failures = draw_figures(layout)
    for failure in fig_failures:
        log.error("demo: figure failed: %s", failure)
    t_total = time.monotonic() - t0

    table = summary_table(runs, last_results(summaries, runs, budget.epochs))
    report = {
        "table": table,
        "figures": [str(p) for p in figures],
        "reused": {"runs": runs_reused, "results": skipped, "computed": done, "failed": len(failed),
                   "figures": figures_reused},
        "seconds": {"train": round(t_train, 1), "analyse": round(t_analyse, 1), "total": round(t_total, 1)},
        "analysed_epochs": analysed,
        "robustness_skipped": robust_reason,
        "layout": {k: str(v) for k, v in dataclasses.asdict(layout).items()},
    }
    from landscape.results import write_json

    write_json(layout.results / "demo_table.json", report)
    print(f"\nlandscape demo: MNIST-1D, resnet1d (width {budget.width}), {len(runs)} optimizers x "
          f"{budget.epochs} epochs, analyses at epochs {', '.join(map(str, analysed))}")
    print(f"reused {len(runs_reused)} of {len(runs)} trained runs and {skipped} of {skipped + done + len(failed)} "
          f"results; computed {done}" + (f"; {len(failed)} FAILED (see the log)" if failed else ""))
    print(f"time: train {t_train:.0f} s, analyse {t_analyse:.0f} s, total {t_total:.0f} s\n")
    print(format_table(table))
    if robust_reason is not None:
        print(f"robustness: not run: MNIST-1D: {robust_reason}")
    print(f"\nfigures ({len(figures)}{', reused: no new results' if figures_reused else ''}) in {layout.figures}:")
    for p in figures:
        print(f"  {p}")
    print(f"checkpoints: {layout.checkpoints}   results: {layout.results}   table: {layout.results / 'demo_table.json'}")
    if gallery is not None:
        copied = copy_gallery(figures, gallery)
        print(f"gallery: {len(copied)} figures in {gallery}")
        report["gallery"] = [str(p) for p in copied]
    return report


def copy_gallery(figures: list[Path], folder: str | os.PathLike) -> list[Path]:
    """Copy the :data:`GALLERY` figures among ``figures`` (PNGs) into ``folder``, each under
    :data:`GALLERY_MAX_BYTES` (a larger one is downscaled until it fits); the others are noted."""
    from landscape.atomic import atomic_write

    folder = Path(folder)
    by_stem = {p.stem: p for p in figures if p.suffix == ".png"}
    copied = []
    for stem in GALLERY:
        src = by_stem.get(stem)
        if src is None:
            log.info("demo: gallery: no %s figure in this run; not in the gallery", stem)
            continue
        data = _fit_png(src.read_bytes(), GALLERY_MAX_BYTES)
        target = folder / f"{stem}.png"
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda tmp, data=data: tmp.write_bytes(data))
        copied.append(target)
    return copied


def _fit_png(data: bytes, limit: int) -> bytes:
    """A PNG at most ``limit`` bytes: ``data`` itself, or downscaled by 0.8 until it fits."""
    from PIL import Image

    scale = 1.0
    while len(data) > limit and scale > 0.2:
        scale *= 0.8
        img = Image.open(io.BytesIO(data))
        img = img.resize((max(1, int(img.width * 0.8)), max(1, int(img.height * 0.8))), Image.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="PNG", optimize=True)
        data = buf.getvalue()
    return data
