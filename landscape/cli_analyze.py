"""``landscape analyze``: run registered analyses over checkpoint folders.

The lead's ``landscape/cli.py`` calls :func:`add_analyze_parser` on its subparsers; tests call
:func:`main` directly.

Example::

    landscape analyze checkpoints/ --analyses hessian,sharpness --out results/ \\
        --config analyze.toml --workers 2
    landscape analyze checkpoints/ --analyses sharpness --slurm partition=gpu,gpus=1,time=2:00:00
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path
from typing import Any

from landscape.config import ConfigError, did_you_mean, read_toml, toml_value  # noqa: F401 - read_toml re-exported (its home is config)

# --slurm key -> submitit AutoExecutor parameter (and how to parse its value).
SLURM_KEYS: dict[str, str] = {
    "partition": "slurm_partition",
    "gpus": "gpus_per_node",
    "cpus": "cpus_per_task",
    "mem": "mem_gb",
    "time": "timeout_min",
    "account": "slurm_account",
    "qos": "slurm_qos",
    "constraint": "slurm_constraint",
    "array_parallelism": "slurm_array_parallelism",
    "name": "name",
    "cluster": "cluster",
}
_INT_KEYS = {"gpus", "cpus", "array_parallelism"}


def _analyses_arg(text: str) -> list[str]:
    from landscape.analyses.registry import parse_analyses

    try:
        return parse_analyses(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def parse_minutes(text: str) -> int:
    """Slurm time ``MM``, ``HH:MM:SS``, ``MM:SS`` or ``D-HH:MM:SS`` -> whole minutes (rounded up).

    Example:
        >>> parse_minutes("90"), parse_minutes("2:00:00"), parse_minutes("1-00:00:30")
        (90, 120, 1441)
    """
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not m:
        raise ConfigError(f"--slurm time={text!r} is not a Slurm time; use minutes, HH:MM:SS or D-HH:MM:SS")
    days, a, b, c = m.groups()
    if b is None:  # minutes
        seconds = int(a) * 60
    elif c is None:  # MM:SS
        seconds = int(a) * 60 + int(b)
    else:  # HH:MM:SS
        seconds = int(a) * 3600 + int(b) * 60 + int(c)
    seconds += int(days or 0) * 86400
    return max(1, math.ceil(seconds / 60))


def parse_slurm(text: str) -> dict[str, Any]:
    """``"partition=gpu,gpus=1,time=2:00:00"`` -> submitit ``update_parameters`` keywords.

    Keys: partition, gpus (per task), cpus (per task; also the torch thread count), mem (GB),
    time, account, qos, constraint, array_parallelism (max simultaneous array tasks), name,
    cluster (``slurm``, or ``local``/``debug`` to try a run on this machine).

    Example:
        >>> parse_slurm("partition=gpu,gpus=1,time=90")
        {'slurm_partition': 'gpu', 'gpus_per_node': 1, 'timeout_min': 90}
    """
    params: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise ConfigError(f"--slurm item {item!r} must be key=value")
        if key not in SLURM_KEYS:
            raise ConfigError(
                f"unknown --slurm key {key!r}" + did_you_mean(key, SLURM_KEYS)
                + f"; accepted: {', '.join(SLURM_KEYS)}"
            )
        if key == "time":
            params["timeout_min"] = parse_minutes(value)
        elif key == "mem":
            m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([GgMm]?)[Bb]?", value)
            if not m:
                raise ConfigError(f"--slurm mem={value!r}: give gigabytes, e.g. mem=16 or mem=16G")
            gb = float(m.group(1)) / (1024 if m.group(2).lower() == "m" else 1)
            params["mem_gb"] = gb
        elif key in _INT_KEYS:
            try:
                params[SLURM_KEYS[key]] = int(value)
            except ValueError:
                raise ConfigError(f"--slurm {key}={value!r} must be an integer") from None
        else:
            params[SLURM_KEYS[key]] = value
    return params


def slurm_executor(text: str, out: str | Path):
    """A ``submitit.AutoExecutor`` (logs under ``<out>/slurm``) configured from ``--slurm``."""
    try:
        import submitit
    except ImportError:
        raise ConfigError("--slurm needs the submitit package: pip install submitit") from None
    params = parse_slurm(text)
    cluster = params.pop("cluster", None)
    executor = submitit.AutoExecutor(folder=Path(out) / "slurm" / "%j", cluster=cluster)
    params.setdefault("name", "landscape-analyze")
    params.setdefault("timeout_min", 60)
    params.setdefault("slurm_array_parallelism", 64)
    executor.update_parameters(**params)
    return executor


def parse_set(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """``["hessian.top_k=3", "data.split=\\"test\\""]`` -> nested option tables (TOML values).

    Example:
        >>> parse_set(["hessian.top_k=3", "data.split=test", "sharpness.rho=[0.1, 0.2]"])
        {'hessian': {'top_k': 3}, 'data': {'split': 'test'}, 'sharpness': {'rho': [0.1, 0.2]}}
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        table, dot, option = key.strip().partition(".")
        if not sep or not dot or not table or not option:
            raise ConfigError(f"--set {item!r} must look like TABLE.OPTION=VALUE, e.g. hessian.top_k=3")
        out.setdefault(table, {})[option] = toml_value(value)
    return out


def _split_top_level(text: str) -> list[str]:
    """Split at commas that are not inside brackets, braces or quotes."""
    parts, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return [x.strip() for x in parts if x.strip()]


def parse_kwargs(text: str | None, flag: str = "--model-kwargs") -> dict[str, Any]:
    """``"width=8,shape=[3, 32, 32],name=cnn"`` -> keyword arguments (values read as TOML; a bare
    word is a string).

    Example:
        >>> parse_kwargs("width=8,shape=[3, 32, 32],act=relu,p=0.5")
        {'width': 8, 'shape': [3, 32, 32], 'act': 'relu', 'p': 0.5}
    """
    out: dict[str, Any] = {}
    for item in _split_top_level(text or ""):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ConfigError(f"{flag} item {item!r} must be NAME=VALUE (e.g. {flag} width=8,depth=2)")
        out[key] = toml_value(value)
    return out


def load_options(config: str | Path | None, sets: list[str] | None = None) -> dict[str, Any]:
    """Option tables from a TOML file, then ``--set`` overrides (validated later, strictly)."""
    options: dict[str, Any] = read_toml(config) if config else {}
    for table, values in parse_set(sets).items():
        current = options.setdefault(table, {})
        if not isinstance(current, dict):
            raise ConfigError(f"{config}: {table!r} must be a table")
        current.update(values)
    for table, values in options.items():
        if not isinstance(values, dict):
            raise ConfigError(
                f"{config}: top-level key {table!r} must be a table such as [{table}] "
                "(tables: data, model and one per analysis)"
            )
    return options


def add_analyze_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``analyze`` subcommand to an ``argparse`` subparsers object."""
    from landscape.analyses.registry import analysis_names

    p = subparsers.add_parser(
        "analyze",
        help="run analyses (hessian, sharpness, ...) on every checkpoint in a folder",
        description=(
            "Run registered analyses on every checkpoint under CKPT_DIR (recursive *.pt); one netCDF "
            "file per checkpoint and analysis in OUT/<run>/<checkpoint>/<analysis>-<options hash>.nc, "
            "and OUT/summary.json. Re-running skips finished results; a bad checkpoint is reported, "
            "never fatal. Per-analysis options come from a TOML file with one table per analysis "
            "and a [data] table."
        ),
        epilog=f"analyses: {', '.join(analysis_names())}",
    )
    p.add_argument("ckpt_dir", nargs="+", metavar="CKPT_DIR", help="checkpoint folder(s) or file(s)")
    p.add_argument("--analyses", "-a", required=True, type=_analyses_arg,
                   help=f"comma list of analyses: {', '.join(analysis_names())}")
    p.add_argument("--out", "-o", default="results", help="results folder (default: results)")
    p.add_argument("--config", "-c", default=None, help="TOML file: [data], [hessian], [sharpness], ... tables")
    p.add_argument("--set", action="append", metavar="TABLE.OPTION=VALUE", default=None,
                   help="override one option, e.g. --set hessian.top_k=3 (repeatable)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", "-j", type=_positive_int, default=None,
                       help="local worker processes (default: run serially in this process)")
    where.add_argument("--slurm", default=None, metavar="KEY=VALUE,...",
                       help="submit a Slurm job array via submitit, e.g. partition=gpu,gpus=1,time=2:00:00"
                            f" (keys: {', '.join(SLURM_KEYS)})")
    p.add_argument("--skip-existing", action=argparse.BooleanOptionalAction, default=True,
                   help="skip results that exist for the same options and checkpoint (default: on)")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch threads per task")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--model", default=None, metavar="SPEC",
                   help="model for foreign checkpoints: import path pkg.module:factory or a zoo name "
                        "(default: the spec stored in a landscape checkpoint; also [model] spec = ...)")
    p.add_argument("--model-kwargs", default=None, metavar="K=V,...",
                   help="keyword arguments of the model factory, e.g. width=8,depth=2 (TOML values)")
    p.add_argument("--data", default=None, metavar="SPEC",
                   help="data set: import path pkg.module:factory (called with split=) or a zoo name "
                        "(default: the checkpoint's training set; also [data] dataset = ...)")
    p.add_argument("--data-kwargs", default=None, metavar="K=V,...", help="keyword arguments of the data factory")
    p.add_argument("--loss", default=None, metavar="LOSS",
                   help="ce, mse or an import path pkg.module:loss_fn, for every analysis that reads data")
    p.add_argument("--search-path", action="append", default=None, metavar="DIR",
                   help="extra folder for import paths (the checkpoint folder, its parent and . always are)")
    p.set_defaults(func=run_analyze)
    return p


def run_analyze(args: argparse.Namespace) -> int:
    """Run the ``analyze`` subcommand; exit code 0 when nothing failed, else 1."""
    from landscape.batch import analyze

    options = load_options(args.config, args.set)
    executor = None
    threads = args.threads
    if args.slurm is not None:
        executor = slurm_executor(args.slurm, args.out)
        threads = threads or parse_slurm(args.slurm).get("cpus_per_task")
    summary = analyze(
        args.ckpt_dir,
        args.analyses,
        options=options,
        out=args.out,
        executor=executor,
        workers=args.workers,
        skip_existing=args.skip_existing,
        threads=threads,
        device=args.device,
        model=args.model,
        model_kwargs=parse_kwargs(args.model_kwargs, "--model-kwargs") if args.model_kwargs else None,
        data=args.data,
        data_kwargs=parse_kwargs(args.data_kwargs, "--data-kwargs") if args.data_kwargs else None,
        loss=args.loss,
        search_paths=args.search_path or (),
    )
    where = f"summary: {Path(args.out) / 'summary.json'}" if not summary.write_error else "summary.json NOT written"
    print(f"{summary}; {where}")
    for rec in summary.failed:
        print(f"FAILED {rec['checkpoint']} [{rec['analysis']}]: {rec['error']}", file=sys.stderr)
    if summary.write_error:
        print(f"ERROR {summary.write_error}", file=sys.stderr)
    return 0 if summary.ok else 1


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m landscape.cli_analyze analyze ...``), used by the tests.

    The command and its exit statuses are :func:`landscape.cli.main`'s (one rule); bad input
    leaves through ``SystemExit(2)`` here, as argparse's own errors do.
    """
    from landscape.cli import EXIT_BAD_INPUT
    from landscape.cli import main as cli_main

    status = cli_main(argv)
    if status == EXIT_BAD_INPUT:
        raise SystemExit(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
