"""The ``landscape`` command line: ``train``, ``analyze``, ``plot``, ``demo``.

Every subcommand is reachable as ``main(argv)`` so tests call it directly.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import typing
from collections.abc import Sequence
from pathlib import Path

from landscape.config import ConfigError, SAMConfig, TrainConfig

SAM_VARIANTS = typing.get_args(typing.get_type_hints(SAMConfig)["variant"])


def _kv(text: str) -> tuple[str, object]:
    """``key=value`` with a JSON value when it parses (numbers, lists, true/false), else a string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model and write checkpoints",
                       description="Train with SGD/AdamW, a SAM variant (--sam) or MSAM (--optimizer msam).")
    p.add_argument("--config", help="TOML file with TrainConfig fields; flags override it")
    p.add_argument("--dataset", help="mnist1d (default), synthetic, cifar10, cifar100")
    p.add_argument("--data-root", help="data folder (CIFAR: the folder holding cifar-10-batches-py)")
    p.add_argument("--dataset-kwargs", nargs="*", type=_kv, metavar="KEY=VALUE")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--model", help="a name of landscape.models.model_names()")
    p.add_argument("--model-kwargs", nargs="*", type=_kv, metavar="KEY=VALUE", help="e.g. width=32 depth=2")
    p.add_argument("--optimizer", choices=("sgd", "adamw", "msam"))
    p.add_argument("--base-optimizer", choices=("sgd", "adamw"), help="base of MSAM")
    p.add_argument("--lr", type=float)
    p.add_argument("--momentum", type=float)
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--schedule", choices=("cosine", "constant"))
    p.add_argument("--label-smoothing", type=float)
    g = p.add_argument_group("SAM family (SAM-ON Table 9) and MSAM")
    g.add_argument("--sam", choices=SAM_VARIANTS, help="train with this SAM variant")
    g.add_argument("--rho", type=float, help="SAM radius, or MSAM's rho with --optimizer msam")
    g.add_argument("--mask", help="all, norm (SAM-ON), no-norm, random, blocks, or a group spec")
    g.add_argument("--blocks", help="stages for --mask blocks, e.g. B3 or B2+B3")
    g.add_argument("--m", type=int, help="m-sharpness chunk size (SAM Section 4.1)")
    g.add_argument("--eta", type=float, help="eta of the perturbation model")
    g.add_argument("--freeze-bn-stats", action=argparse.BooleanOptionalAction, default=None,
                   help="leave BatchNorm running statistics untouched in SAM's second pass")
    g.add_argument("--recalibrate-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="MSAM: re-estimate BatchNorm statistics at unshifted weights before eval/save")
    g.add_argument("--warmup-no-rho", action=argparse.BooleanOptionalAction, default=None,
                   help="MSAM: rho=0 during warm-up")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", help="run folder (default checkpoints/run)")
    p.add_argument("--save-every", type=int)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--threads", type=int)
    p.set_defaults(func=run_train)


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Merge a TOML config and command-line flags into a validated TrainConfig."""
    from landscape.cli_analyze import read_toml

    d = read_toml(args.config) if args.config else {}
    simple = ("dataset", "data_root", "augment", "model", "optimizer", "base_optimizer", "lr",
              "momentum", "nesterov", "weight_decay", "epochs", "batch_size", "warmup_epochs",
              "schedule", "label_smoothing", "seed", "out", "save_every", "device", "resume", "threads")
    for key in simple:
        value = getattr(args, key)
        if value is not None:
            d[key] = value
    if args.dataset_kwargs:
        d["dataset_kwargs"] = {**d.get("dataset_kwargs", {}), **dict(args.dataset_kwargs)}
    if args.model_kwargs:
        d["model_kwargs"] = {**d.get("model_kwargs", {}), **dict(args.model_kwargs)}
    optimizer = d.get("optimizer", "sgd")
    sam_keys = {"rho": args.rho, "mask": args.mask, "blocks": args.blocks, "m": args.m, "eta": args.eta,
                "freeze_bn_stats": args.freeze_bn_stats}
    if args.sam is not None or isinstance(d.get("sam"), dict):
        sam = dict(d.get("sam") or {})
        if args.sam is not None:
            sam["variant"] = args.sam
        sam.update({k: v for k, v in sam_keys.items() if v is not None})
        d["sam"] = sam
    elif optimizer == "msam":
        msam = dict(d.get("msam") or {})
        for k, v in {"rho": args.rho, "recalibrate_bn": args.recalibrate_bn, "warmup_no_rho": args.warmup_no_rho}.items():
            if v is not None:
                msam[k] = v
        d["msam"] = msam
    else:
        given = [f"--{k.replace('_', '-')}" for k, v in sam_keys.items() if v is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} need --sam VARIANT (or --optimizer msam for --rho)")
    if optimizer == "msam" and "msam" not in d:
        d["msam"] = {}
    cfg = TrainConfig.from_dict(d)
    return cfg


def run_train(args: argparse.Namespace) -> int:
    from landscape.trainer import train

    cfg = train_config_from_args(args)
    run = train(cfg)
    from landscape.results import read_json

    hist = read_json(run / "run.json")["history"]
    if hist:
        h = hist[-1]
        print(f"{run}: epoch {h['epoch']} train acc {h['train_acc']:.4f} test acc {h['test_acc']:.4f} "
              f"test loss {h['test_loss']:.4f}")
    return 0


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job on MNIST-1D: train SGD/SAM/SAM-ON/MSAM, analyze, plot")
    p.add_argument("--out", default="demo", help="folder for checkpoints/, results/ and figures/")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="tiny settings (tests)")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from landscape.demo import demo

    demo(Path(args.out), epochs=args.epochs, quick=args.quick)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="landscape",
        description="Train with SGD, the SAM family or MSAM; analyse checkpoint folders (Hessian spectra, "
        "m-sharpness, gamma/beta); plot the results.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    try:
        from landscape.cli_analyze import add_analyze_parser
    except ImportError:  # pragma: no cover - analyze lands with the batch module
        add_analyze_parser = None
    if add_analyze_parser is not None:
        add_analyze_parser(sub)
    try:
        from landscape.plots.cli import add_plot_parser
    except ImportError:  # pragma: no cover
        add_plot_parser = None
    if add_plot_parser is not None:
        add_plot_parser(sub)
    add_demo_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``landscape`` command.

    Example:
        >>> main(["train", "--dataset", "synthetic", "--model", "mlp", "--epochs", "1",
        ...       "--out", "/tmp/ls-doc-run", "--no-resume"])  # doctest: +SKIP
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    from landscape.checkpoint import CheckpointError
    from landscape.trainer import TrainingError

    try:
        return int(args.func(args) or 0)
    except (ValueError, CheckpointError) as e:  # ConfigError, GroupError and bad names
        print(f"landscape {args.command}: error: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"landscape {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
