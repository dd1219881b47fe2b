"""The ``landscape`` command line: ``train``, ``analyze``, ``plot``, ``slice``, ``demo``.

Every subcommand is reachable as ``main(argv)`` so tests call it directly.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any

from landscape.config import ConfigError, Options, TrainConfig, did_you_mean, field_docs, read_toml

# Exit statuses of every subcommand (one rule, in :func:`exit_status`).
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _kv(text: str) -> tuple[str, object]:
    """``key=value`` with a JSON value when it parses (numbers, lists, true/false), else a string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _argparse_kwargs(tp: Any, name: str) -> dict[str, Any]:
    """argparse keywords for an option ``name`` of type ``tp`` (``X | None`` as X)."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        tp = args[0]
    origin = typing.get_origin(tp)
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is typing.Literal:
        values = typing.get_args(tp)
        return {"choices": values, "type": type(values[0])}
    if tp in (int, float, str):
        return {"type": tp, "metavar": name.upper()}
    if origin is tuple:
        elems = typing.get_args(tp)
        return {"type": elems[0], "nargs": len(elems), "metavar": name.upper()}
    if tp is dict or origin is dict:
        return {"type": _kv, "nargs": "*", "metavar": "KEY=VALUE"}
    raise TypeError(f"no command-line form for an option of type {tp!r}")  # pragma: no cover


def _sharpness_tables() -> dict[str, type[Options]]:
    """TrainConfig's nested option tables (``sam``, ``msam``), by field name."""
    hints = typing.get_type_hints(TrainConfig)
    tables = {}
    for f in dataclasses.fields(TrainConfig):
        args = typing.get_args(hints[f.name]) or (hints[f.name],)
        sub = next((a for a in args if isinstance(a, type) and issubclass(a, Options)), None)
        if sub is not None:
            tables[f.name] = sub
    return tables


def add_train_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``landscape train``: one flag per TrainConfig field, derived from the dataclass.

    Top-level fields are ``--field-name``; a nested table's fields are ``--TABLE-FIELD`` (and
    giving one switches that optimizer on, like a ``[sam]``/``[msam]`` table in the TOML file),
    with the short forms ``--rho``, ``--mask``, ``--m``... applying to the table that is on.
    ``--sam VARIANT`` is ``--sam-variant``, ``--msam`` switches MSAM on with its defaults, and
    ``--optimizer msam`` (with ``--base-optimizer``) is the earlier spelling of ``--msam``.
    Help texts are the ``Attributes:`` lines of the options classes.
    """
    p = sub.add_parser("train", help="train a model and write checkpoints",
                       description="Train with SGD/AdamW, a SAM variant (--sam VARIANT) or MSAM (--msam). "
                                   "Flags override the --config TOML file.")
    p.add_argument("--config", help="TOML file with TrainConfig fields ([sam] / [msam] tables); flags override it")
    hints, docs = typing.get_type_hints(TrainConfig), field_docs(TrainConfig)
    tables = _sharpness_tables()
    for f in dataclasses.fields(TrainConfig):
        if f.name in tables:
            continue
        p.add_argument(_flag(f.name), dest=f.name, default=None, help=docs.get(f.name),
                       **_argparse_kwargs(hints[f.name], f.name))
    top = {f.name for f in dataclasses.fields(TrainConfig)}
    short: dict[str, list[str]] = {}  # nested field -> tables that have it
    for table, cls in tables.items():
        g = p.add_argument_group(f"{table} ({cls.__name__}; any of these switches {table.upper()} on)")
        sub_hints, sub_docs = typing.get_type_hints(cls), field_docs(cls)
        for f in dataclasses.fields(cls):
            flags = [f"--{table}-{f.name.replace('_', '-')}"]
            if f.name == "variant":
                flags.insert(0, f"--{table}")  # --sam VARIANT
            g.add_argument(*flags, dest=f"{table}.{f.name}", default=None, help=sub_docs.get(f.name),
                           **_argparse_kwargs(sub_hints[f.name], f.name))
            if f.name not in top and f.name != "variant":  # --sam VARIANT is short already
                short.setdefault(f.name, []).append(table)
        if not any(f.name == "variant" for f in dataclasses.fields(cls)):
            g.add_argument(f"--{table}", dest=f"{table}.on", action="store_true", default=None,
                           help=f"train with {cls.__name__} (defaults unless other --{table}-... flags)")
    g = p.add_argument_group("short forms: apply to the sharpness-aware optimizer that is on")
    for name, owners in short.items():
        cls = tables[owners[0]]
        g.add_argument(_flag(name), dest=f"any.{name}", default=None,
                       help=f"--{owners[0]}-{name.replace('_', '-')}"
                            + "".join(f" or --{o}-{name.replace('_', '-')}" for o in owners[1:]),
                       **_argparse_kwargs(typing.get_type_hints(cls)[name], name))
    p.set_defaults(func=run_train)
    return p


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Merge a TOML config and command-line flags into a validated TrainConfig."""
    d = read_toml(args.config) if args.config else {}
    given = {k: v for k, v in vars(args).items() if v is not None}
    tables = _sharpness_tables()
    for f in dataclasses.fields(TrainConfig):
        if f.name in tables or f.name not in given:
            continue
        value = given[f.name]
        if isinstance(value, list) and typing.get_type_hints(TrainConfig)[f.name] is dict:
            base = d.get(f.name, {})
            value = {**(base if isinstance(base, dict) else {}), **dict(value)}  # flags add to the file's table
        d[f.name] = value
    for table in tables:
        values = {k.split(".", 1)[1]: v for k, v in given.items() if k.startswith(table + ".")}
        if values:
            if table in d and not isinstance(d[table], dict):
                raise ConfigError(f"{args.config}: {table!r} must be a table such as [{table}]")
            merged = dict(d.get(table) or {})
            merged.update({k: v for k, v in values.items() if k != "on"})
            d[table] = merged
    shared = {k.split(".", 1)[1]: v for k, v in given.items() if k.startswith("any.")}
    if shared:
        on = [t for t in tables if isinstance(d.get(t), dict)]
        if not on and d.get("optimizer") == "msam":
            d["msam"], on = {}, ["msam"]
        flags = ", ".join(_flag(k) for k in shared)
        if len(on) != 1:
            raise ConfigError(
                f"{flags} need one sharpness-aware optimizer: --sam VARIANT or --msam (--optimizer msam)"
                + (f"; both {' and '.join(on)} are on" if on else "")
            )
        table = on[0]
        unknown = [k for k in shared if k not in {f.name for f in dataclasses.fields(tables[table])}]
        if unknown:
            raise ConfigError(
                f"{', '.join(_flag(k) for k in unknown)} do not apply to {table}; "
                f"{table} takes {', '.join(_flag(f.name) for f in dataclasses.fields(tables[table]))}"
            )
        d[table] = {**d[table], **shared}
    return TrainConfig.from_dict(d)


def run_train(args: argparse.Namespace) -> int:
    from landscape.results import read_json
    from landscape.trainer import train

    cfg = train_config_from_args(args)
    run = train(cfg)
    hist = read_json(run / "run.json")["history"]
    if hist:
        h = hist[-1]
        print(f"{run}: epoch {h['epoch']} train acc {h['train_acc']:.4f} test acc {h['test_acc']:.4f} "
              f"test loss {h['test_loss']:.4f}")
    return EXIT_OK


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job on MNIST-1D: train SGD/SAM/SAM-ON/MSAM, analyze, plot",
                       description="Train SGD, SAM, SAM-ON and MSAM on MNIST-1D (a checkpoint every epoch), run "
                                   "every analysis that applies, draw the figures and print one table. A second "
                                   "run reuses finished runs and results.")
    p.add_argument("--out", default=None,
                   help="folder for checkpoints/, results/ and figures/ (default: checkpoints/demo, "
                        "results/demo and figures/demo under the current folder)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 8; 2 with --quick)")
    p.add_argument("--analyse-epochs", default=None, metavar="LIST",
                   help="epochs whose checkpoints get the per-epoch analyses: a comma list or 'all' "
                        "(default 4,8; the last epoch is always included)")
    p.add_argument("--quick", action="store_true", help="tiny settings (tests)")
    p.add_argument("--gallery", default=None, metavar="DIR",
                   help="also copy the README gallery's figures there as PNGs (make gallery: analyses/gallery)")
    p.add_argument("--redraw", action="store_true",
                   help="draw the figures even when nothing new was computed (after a change of the plotting code)")
    p.set_defaults(func=run_demo)


def _epoch_list(text: str | None) -> tuple[int, ...] | str | None:
    """``--analyse-epochs``: ``None``, ``"all"`` or a comma list of epochs >= 1."""
    if text is None or text.strip() == "all":
        return None if text is None else "all"
    try:
        epochs = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        epochs = ()
    if not epochs or min(epochs) < 1:
        raise ConfigError(f"--analyse-epochs {text!r}: accepted: 'all' or a comma list of epochs >= 1, e.g. 2,4,8")
    return epochs


def run_demo(args: argparse.Namespace) -> int:
    from landscape.demo import demo

    if args.epochs is not None and args.epochs < 1:
        raise ConfigError(f"--epochs {args.epochs}: accepted: an integer >= 1")
    report = demo(args.out, epochs=args.epochs, quick=args.quick, gallery=args.gallery,
                  analyse_epochs=_epoch_list(args.analyse_epochs), redraw=args.redraw)
    return EXIT_FAILED if report["reused"]["failed"] else EXIT_OK


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
    try:
        from landscape.cli_slice import add_slice_parser
    except ImportError:  # pragma: no cover - slice lands with the slices analysis
        add_slice_parser = None
    if add_slice_parser is not None:
        add_slice_parser(sub)
    add_demo_parser(sub)
    for p in sub.choices.values():
        strict_flags(p)
    return parser


def strict_flags(p: argparse.ArgumentParser) -> None:
    """No silent abbreviations (``--epoch`` is not ``--epochs``), and an unknown flag is an error
    that names the nearest accepted one and lists them all; applied to every subcommand."""
    p.allow_abbrev = False
    flags = sorted({o for a in p._actions for o in a.option_strings if o.startswith("--")})
    parse_known = p.parse_known_args

    def parse_known_args(args=None, namespace=None):
        ns, extras = parse_known(args, namespace)
        unknown = [e for e in extras if e.startswith("-")]
        if unknown:
            msgs = [e + did_you_mean(e.split("=", 1)[0], flags) for e in unknown]
            p.error(f"unrecognized option(s): {'; '.join(msgs)}; accepted: {', '.join(flags)}")
        return ns, extras

    p.parse_known_args = parse_known_args  # type: ignore[method-assign]


def exit_status(error: BaseException) -> int | None:
    """The exit status for an error a subcommand raised; None: a bug, let the traceback show.

    2: bad input (an option, value, name, file or folder: ``ConfigError`` and the other
    ``ValueError`` subclasses, ``CheckpointError``, ``OSError``); 1: the work failed
    (``TrainingError``: divergence, a run that cannot be continued).
    """
    from landscape.checkpoint import CheckpointError
    from landscape.trainer import TrainingError

    if isinstance(error, TrainingError):
        return EXIT_FAILED
    if isinstance(error, (ValueError, CheckpointError, OSError)):
        return EXIT_BAD_INPUT
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``landscape`` command: the one ``main`` and exit-status rule.

    Returns 0 on success, 1 when the work failed (a diverged run, failed analyses), 2 for bad
    input (printed as ``landscape COMMAND: error: ...``); argparse's own usage errors exit 2.

    Example:
        >>> main(["train", "--dataset", "synthetic", "--model", "mlp", "--epochs", "1",
        ...       "--out", "/tmp/ls-doc-run", "--no-resume"])  # doctest: +SKIP
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except Exception as e:  # noqa: BLE001 - sorted by exit_status; unknown errors re-raised
        status = exit_status(e)
        if status is None:
            raise
        print(f"landscape {args.command}: error: {e}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
