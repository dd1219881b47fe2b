"""The training runs every research script in ``analyses/`` shares, and the flags they share.

A *study* is one data set and model trained with several optimizers and seeds. Its runs live in
``<out>/checkpoints/<dataset>-<model>/<optimizer>-seed<k>/`` (one ``epoch_NNNN.pt`` per epoch,
``last.pt``, ``run.json``), so the scripts train each run once and reuse it: ``landscape.train``
returns at once when a run already holds its epochs and resumes a run that was interrupted
(it refuses a folder whose stored config differs from the asked one, naming the keys).

The optimizers and their radii are the demo's (``landscape.demo.RUNS``: SGD; SAM rho=0.05, the
CIFAR default of "Sharpness-Aware Minimization for Efficiently Improving Generalization",
arXiv 2010.01412; SAM-ON rho=0.5 on the normalization parameters only, "Normalization Layers
Are All That Sharpness-Aware Minimization Needs", arXiv 2306.04226; MSAM rho=0.3, "Momentum-SAM:
Sharpness Aware Minimization without Computational Overhead", arXiv 2401.12033). The base
hyper-parameters are the demo's too (lr 0.1 with 1 warm-up epoch and cosine decay, batch 128,
weight decay 5e-4, momentum 0.9); the budget differs: every epoch is saved (the over-training
analyses read them all), and the epochs are sized to the 2-core box the scripts are written
for (see ``EPOCHS``).

Results go to ``<out>/results/<script>/<dataset>-<model>/`` (the ``landscape.analyze`` store:
one netCDF file per checkpoint and analysis, reused when it exists), figures to
``<out>/figures/<script>/<dataset>-<model>/``. ``--quick`` is a tiny budget for the tests (600
examples of MNIST-1D or synthetic data, resnet1d width 4, 2 epochs, 1 seed, batch 100) in
``<dataset>-<model>-quick``, never mixed with real runs.

Example:
    >>> args = parser("demo").parse_args(["--quick", "--out", "/tmp/x"])
    >>> study = Study.from_args(args, "demo")
    >>> study.checkpoints.as_posix(), study.seeds, study.epochs
    ('/tmp/x/checkpoints/mnist1d-resnet1d-quick', [0], 2)
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

REPO = Path(__file__).resolve().parents[1]
# `python analyses/NAME.py` puts analyses/ on sys.path, not the repository: import the
# repository's landscape (installed or not) - the one place this is done.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from landscape.cli import _kv  # noqa: E402  (the CLI's key=value parser: one home)
from landscape.config import TrainConfig  # noqa: E402
from landscape.demo import RUNS  # noqa: E402

log = logging.getLogger("landscape")

OPTIMIZERS: dict[str, dict] = RUNS  # name -> the TrainConfig fields that make the optimizer
# The demo's base settings (landscape.demo.demo_configs), every epoch saved.
BASE = dict(lr=0.1, batch_size=128, warmup_epochs=1.0, weight_decay=5e-4, save_every=1)
DATASET, MODEL, WIDTH = "mnist1d", "resnet1d", 16
# The budget, measured on the project's 2-core box shared with other jobs (load average 12-15,
# 2026-12-01): a 5-epoch run takes about 45 s with SGD, 60-75 s with SAM; the 3 SGD + 3 SAM
# runs 5.8 min. SGD then reaches 0.974 test accuracy, so more epochs buy little.
EPOCHS = 5
SEEDS = (0, 1, 2)
QUICK = dict(dataset_kwargs={"num_samples": 600}, model_kwargs={"width": 4}, epochs=2, batch_size=100)


def parser(description: str, optimizers: Sequence[str] = tuple(RUNS)) -> argparse.ArgumentParser:
    """The flags of every research script (each script adds its own after these).

    ``optimizers``: the script's default runs (a subset of :data:`OPTIMIZERS`).
    """
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default=DATASET, help="a landscape data set (mnist1d, cifar10, synthetic, ...)")
    p.add_argument("--dataset-kwargs", type=_kv, nargs="*", default=[], metavar="KEY=VALUE",
                   help="options of the data set, e.g. num_samples=2000")
    p.add_argument("--data-root", default=None, help="data folder (CIFAR: the one holding cifar-10-batches-py)")
    p.add_argument("--model", default=MODEL, help="a landscape zoo model (resnet1d, mlp, resnet20, ...)")
    p.add_argument("--model-kwargs", type=_kv, nargs="*", default=None, metavar="KEY=VALUE",
                   help=f"options of the model (default for resnet1d: width={WIDTH})")
    p.add_argument("--epochs", type=int, default=None, help=f"training epochs (default {EPOCHS}; --quick: 2)")
    p.add_argument("--seeds", type=_seeds, default=None,
                   help="seeds, e.g. 0,1,2 or a count such as 3 (default 0,1,2; --quick: 0)")
    p.add_argument("--optimizers", type=_names, default=list(optimizers),
                   help=f"runs to train and analyse, from {','.join(RUNS)}")
    p.add_argument("--out", type=Path, default=REPO,
                   help="root of checkpoints/, results/ and figures/ (default: the repository)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--quick", action="store_true", help="a tiny budget (the tests): 600 examples, width 4, 2 epochs, seed 0")
    return p


def _seeds(text: str) -> list[int]:
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: expected a count (3) or a comma list (0,1,2)") from None
    if len(values) == 1 and "," not in text:
        values = list(range(values[0]))
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: expected at least one seed >= 0")
    return values


def _names(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in RUNS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"--optimizers {text!r}: unknown {unknown}; accepted: {', '.join(RUNS)}")
    return names


@dataclass(frozen=True)
class Study:
    """One data set and model, trained with ``optimizers`` x ``seeds``; where everything goes."""

    script: str
    name: str  # <dataset>-<model>[-quick]
    out: Path
    optimizers: list[str]
    seeds: list[int]
    epochs: int
    base: TrainConfig  # the shared fields (dataset, model, budget); optimizer and seed vary
    device: str = "auto"
    quick: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace, script: str) -> Study:
        fields = dict(BASE, dataset=args.dataset, model=args.model, data_root=args.data_root,
                      dataset_kwargs=dict(args.dataset_kwargs), device=args.device, epochs=args.epochs or EPOCHS)
        model_kwargs = {"width": WIDTH} if args.model == "resnet1d" else {}
        if args.quick:
            fields.update({k: v for k, v in QUICK.items() if k != "epochs"})
            if args.dataset in ("mnist1d", "synthetic"):  # the data sets with a num_samples option
                fields["dataset_kwargs"] = {**QUICK["dataset_kwargs"], **fields["dataset_kwargs"]}
            fields["epochs"] = args.epochs or QUICK["epochs"]
            model_kwargs = dict(QUICK["model_kwargs"]) if args.model == "resnet1d" else {}
        if args.model_kwargs is not None:
            model_kwargs = dict(args.model_kwargs)
        fields["model_kwargs"] = model_kwargs
        seeds = args.seeds or ([0] if args.quick else list(SEEDS))
        name = f"{args.dataset}-{args.model}" + ("-quick" if args.quick else "")
        return cls(script=script, name=name, out=Path(args.out), optimizers=list(args.optimizers), seeds=seeds,
                   epochs=fields["epochs"], base=TrainConfig(**fields), device=args.device, quick=args.quick)

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints" / self.name

    @property
    def results(self) -> Path:
        return self.out / "results" / self.script / self.name

    @property
    def figures(self) -> Path:
        return self.out / "figures" / self.script / self.name

    def run_dir(self, optimizer: str, seed: int) -> Path:
        return self.checkpoints / run_name(optimizer, seed)

    def config(self, optimizer: str, seed: int) -> TrainConfig:
        """The full training config of one run (the base plus the optimizer's fields)."""
        from dataclasses import replace

        return replace(self.base, seed=seed, out=str(self.run_dir(optimizer, seed)), **OPTIMIZERS[optimizer])

    def train(self, optimizers: Iterable[str] | None = None) -> dict[tuple[str, int], Path]:
        """Train (or reuse) every run; ``{(optimizer, seed): run folder}``."""
        from landscape.trainer import train

        runs = {}
        for opt in optimizers or self.optimizers:
            for seed in self.seeds:
                t = time.monotonic()
                runs[opt, seed] = train(self.config(opt, seed), progress=False)
                log.info("%s: %s seed %d ready after %.0f s", self.script, opt, seed, time.monotonic() - t)
        return runs

    def checkpoint(self, optimizer: str, seed: int, epoch: int | None = None) -> Path:
        """The checkpoint of ``epoch`` (default: the last epoch of the budget)."""
        return self.run_dir(optimizer, seed) / f"epoch_{self.epochs if epoch is None else epoch:04d}.pt"

    def final_checkpoints(self, optimizers: Iterable[str] | None = None) -> list[Path]:
        return [self.checkpoint(o, s) for o in optimizers or self.optimizers for s in self.seeds]

    def final_results(self, analysis: str, options: Mapping) -> xr.Dataset:
        """Run ``analysis`` with ``options`` on the final checkpoints (finished results are
        reused) and open exactly that option set's results, each run at the budget's last epoch:
        the store may hold other option sets and, for a run trained further, later epochs."""
        from landscape.batch import analyze
        from landscape.results import open_results

        summary = analyze(self.final_checkpoints(), analysis, options=dict(options), out=self.results,
                          device=self.device, progress=False)
        if summary.failed:
            raise SystemExit(f"{self.script}: {analysis} failed: "
                             + "; ".join(sorted({f["error"] for f in summary.failed})))
        (hash_,) = {Path(r["result"]).stem.rsplit("-", 1)[1] for r in summary.done + summary.skipped}
        ds = open_results(self.results, analysis, options_hash=hash_)
        at = [ds.sel(run=r).isel(step=int(np.flatnonzero(ds["epoch"].sel(run=r).values == self.epochs)[0]))
              for r in ds["run"].values]
        return xr.concat(at, "run", coords="different", compat="equals")

    def history(self, optimizer: str, seed: int) -> list[dict]:
        """The run's per-epoch metrics (``run.json``: train_loss, test_acc, ...)."""
        from landscape.results import read_json

        return read_json(self.run_dir(optimizer, seed) / "run.json")["history"][: self.epochs]


def run_name(optimizer: str, seed: int) -> str:
    """``sgd-seed0``: the run folder, and the ``run`` coordinate of every result."""
    return f"{optimizer}-seed{seed}"


def split_run(run: str) -> tuple[str, int]:
    """``"sam-on-seed2"`` -> ``("sam-on", 2)``."""
    opt, _, seed = run.rpartition("-seed")
    return opt, int(seed)


def mean_std(values: Sequence[float], digits: int = 3) -> str:
    """``"0.912 +- 0.004"`` over seeds (sample std; one seed: the value alone)."""
    values = [float(v) for v in values]
    m = statistics.fmean(values)
    if len(values) < 2:
        return f"{m:.{digits}g}"
    return f"{m:.{digits}g} +- {statistics.stdev(values):.2g}"


def print_table(title: str, rows: Mapping[str, Mapping[str, Sequence[float]]], digits: int = 3) -> str:
    """Print (and return) one table: a row per optimizer, a column per metric, seed mean +- std.

    Example:
        >>> _ = print_table("t", {"sgd": {"acc": [0.9, 0.92]}, "sam": {"acc": [0.93, 0.93]}})
        t
        run  acc
        sgd  0.91 +- 0.014
        sam  0.93 +- 0
    """
    columns = list(next(iter(rows.values())))
    cells = [[name] + [mean_std(row[c], digits) for c in columns] for name, row in rows.items()]
    header = ["run"] + columns
    widths = [max(len(str(r[i])) for r in [header] + cells) for i in range(len(header))]
    lines = [title] + ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in [header] + cells]
    text = "\n".join(lines)
    print(text)
    return text


def colors(runs: Iterable[str]) -> dict[str, object]:
    """run -> color, one color per optimizer (its seeds share it), the same in every script.

    Example:
        >>> c = colors(["sgd-seed0", "sgd-seed1", "sam-seed0"])
        >>> c["sgd-seed0"] == c["sgd-seed1"] != c["sam-seed0"]
        True
    """
    from landscape.plots import run_colors

    by_optimizer = run_colors(OPTIMIZERS)
    return {str(r): by_optimizer[split_run(str(r))[0]] for r in runs}


def summary_figure(rows: Mapping[str, Mapping[str, Sequence[float]]], path: Path, title: str = "") -> list[Path]:
    """The table as a figure: one panel per metric, a bar per optimizer (seed mean), its seeds as
    dots and the std as an error bar; written as PNG and PDF (``landscape.plots.save``)."""
    import numpy as np

    from landscape.plots import save
    from landscape.plots.common import figure, style

    columns = list(next(iter(rows.values())))
    by_optimizer = colors([run_name(o, 0) for o in rows])
    with style():
        fig = figure(2.0 * len(columns) + 0.4, 2.4)
        axes = fig.subplots(1, len(columns), squeeze=False)[0]
        for ax, col in zip(axes, columns):
            for i, (opt, row) in enumerate(rows.items()):
                v = np.asarray(row[col], dtype=float)
                c = by_optimizer[run_name(opt, 0)]
                ax.bar(i, v.mean(), color=c, alpha=0.5, yerr=v.std(ddof=1) if v.size > 1 else None, capsize=3)
                ax.plot(np.full(v.size, i), v, "o", color=c, markersize=3)
            ax.set_xticks(range(len(rows)), list(rows), rotation=30)
            ax.set_title(col)
        if title:
            fig.suptitle(title)
    return save(fig, path)


def setup_logging() -> None:
    """One log line per event on stderr (training and analyses log to ``landscape``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
