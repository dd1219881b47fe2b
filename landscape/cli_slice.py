"""``landscape slice``: a loss-landscape slice through one, two or three checkpoints, or along a
run's training trajectory (Li et al. 2018, "Visualizing the loss landscape of neural nets",
arXiv:1712.09913).

* one checkpoint: a 2-D (``--ndim 1``: 1-D) slice around it along seeded Gaussian directions,
  filter-normalized by default, or along its momentum, its gradient or the top Hessian
  eigenvectors (``--direction``);
* two checkpoints A B: the linear interpolation ``A + alpha (B - A)`` (alpha = 0 at A, 1 at B);
* three checkpoints A B C: the plane through them (centre A, ``d1 = B - A``, ``d2 = C - A``),
  the three marked on it;
* ``--trajectory RUN_DIR``: the plane of the first two PCA directions of the run's checkpoints
  (centre: the last), with every checkpoint's coordinates in it.

The result is one netCDF file written through :mod:`landscape.results` (atomically, under a
result lock; a current result for the same checkpoints and options is kept, not recomputed),
at ``OUT/<run>/<centre checkpoint>/slice-<options hash>.nc``, so ``landscape plot OUT`` draws
it like any analysis result; ``--plot`` draws the figures beside it at once.

Example::

    landscape slice runs/sgd/epoch_0010.pt --out results/                      # 2-D, random
    landscape slice runs/sgd/epoch_0001.pt runs/sgd/epoch_0010.pt --grid=-0.5:1.5:41 --plot
    landscape slice a.pt b.pt c.pt --out results/ --plot
    landscape slice --trajectory runs/sgd --grid 21 --out results/ --plot

The model, data and loss are given as for ``landscape analyze`` (``--model``, ``--data``,
``--loss``, ``--search-path``; the same resolvers).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from landscape.config import ConfigError

DIRECTIONS = ("random", "momentum", "gradient", "eigenvector")
DEFAULT_GRID = {"random": "-1:1:21", "interpolation": "-0.5:1.5:41", "plane": "-0.5:1.5:21"}


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def parse_grid(text: str | None) -> Any:
    """``--grid`` text -> the ``grid`` of :func:`landscape.analyses.slices.loss_slice`: one spec
    for every axis or one per axis, comma separated; a spec is ``LO:HI:NUM`` or ``NUM`` (points on
    [-1, 1]). ``None`` stays ``None`` (the default of the kind of slice).

    Example:
        >>> parse_grid("-1:1:21"), parse_grid("11"), parse_grid("-1:1:21,-0.5:0.5:11")
        ('-1:1:21', 11, ['-1:1:21', '-0.5:0.5:11'])
    """
    if text is None:
        return None
    items = [t.strip() for t in str(text).split(",")]
    if not all(items) or len(items) > 2:
        raise ConfigError(f"--grid {text!r}: give LO:HI:NUM (or NUM) for every axis, or two of them "
                          "separated by a comma (alpha, beta), e.g. --grid=-1:1:21 or --grid=-1:1:21,-0.5:0.5:11")
    specs: list[Any] = []
    for item in items:
        if item.lstrip("+-").isdigit():
            specs.append(int(item))
        elif item.count(":") == 2:
            specs.append(item)
        else:
            raise ConfigError(f"--grid {text!r}: {item!r} is neither LO:HI:NUM (e.g. -1:1:21) nor a number of points")
    return specs[0] if len(specs) == 1 else specs


def add_slice_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``slice`` subcommand to an ``argparse`` subparsers object."""
    from landscape.analyses.slices import BN_MODES
    from landscape.directions import NORMALIZATIONS, ONE_D

    p = subparsers.add_parser(
        "slice",
        help="loss-landscape slice: around a checkpoint, between two, through three, or a run's trajectory",
        description=(
            "One checkpoint: a 2-D (--ndim 1: 1-D) slice along random (or --direction) directions; two: "
            "the interpolation A + alpha (B - A); three: the plane through them; --trajectory RUN_DIR: the "
            "PCA plane of the run's checkpoints. Writes OUT/<run>/<checkpoint>/slice-<hash>.nc (and with "
            "--plot its figures beside it)."
        ),
    )
    # "--grid -1:1:21": a value that starts with "-<digit>" is a value, not a flag (argparse before
    # Python 3.13 only knows plain negative numbers; 3.13 reads it this way by itself).
    p._negative_number_matcher = re.compile(r"^-\d+$|^-\d*\.\d+$|^-\.?\d[\d.]*:")
    p.add_argument("checkpoints", nargs="*", metavar="CKPT", help="one, two or three checkpoint files")
    p.add_argument("--trajectory", metavar="RUN_DIR", default=None,
                   help="a run folder: the PCA plane of its checkpoints (centre: the last); no CKPT then")
    p.add_argument("--grid", default=None, metavar="LO:HI:NUM[,LO:HI:NUM]",
                   help="grid of every axis (or alpha,beta): LO:HI:NUM or NUM points on [-1, 1]; default "
                        "-1:1:21 (one checkpoint), -0.5:1.5:41 (two), -0.5:1.5:21 (three), 21 points over the "
                        "trajectory's extent with a margin (--trajectory; NUM sets the points); 0 is always a point")
    p.add_argument("--out", "-o", default="results", help="results folder (default: results)")
    p.add_argument("--direction", choices=DIRECTIONS, default="random",
                   help="one checkpoint: random (seeded Gaussian, default), momentum (its optimizer's buffer), "
                        "gradient, eigenvector (top Hessian eigenvectors); in 2-D, momentum and gradient get "
                        "a random second direction")
    p.add_argument("--ndim", type=int, choices=(1, 2), default=None, help="one checkpoint: 1-D or 2-D (default 2)")
    p.add_argument("--normalization", choices=NORMALIZATIONS, default="filter",
                   help="random/momentum/gradient directions: filter (Li et al., default), layer, model, none")
    p.add_argument("--one-d", choices=ONE_D, default="ignore",
                   help="1-D parameters (biases, norm gamma/beta): ignore (zero, default) or filter")
    p.add_argument("--params", default="all", help="parameter group that moves (e.g. norm, B3, glob:fc.*)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random directions (default 0)")
    p.add_argument("--orthogonalize", action="store_true", help="make d2 orthogonal to d1 (cos(d1, d2) = 0)")
    p.add_argument("--bn-mode", choices=BN_MODES, default="eval",
                   help="BatchNorm: eval (centre's running statistics), recompute (re-estimated per point), batch")
    p.add_argument("--recompute-batches", type=_positive_int, default=None,
                   help="batches that re-estimate the statistics with --bn-mode recompute (default all)")
    p.add_argument("--batch-size", type=_positive_int, default=256, help="examples per batch (default 256)")
    p.add_argument("--max-samples", type=_positive_int, default=None, help="use the first N examples (default all)")
    p.add_argument("--vmap", action="store_true", help="several grid points per forward pass (torch.func.vmap)")
    p.add_argument("--autocast", choices=("bf16",), default=None,
                   help="forward passes under bfloat16 autocast (its error at the centre is recorded)")
    p.add_argument("--memory-format", choices=("auto", "contiguous", "channels_last"), default="auto",
                   help="layout of image inputs (default auto: channels_last for Conv2d models)")
    p.add_argument("--model", default=None, metavar="SPEC",
                   help="model for foreign checkpoints: import path pkg.module:factory or a zoo name")
    p.add_argument("--model-kwargs", default=None, metavar="K=V,...", help="keyword arguments of the model factory")
    p.add_argument("--data", default=None, metavar="SPEC",
                   help="data set: a zoo name or pkg.module:factory (default: the checkpoint's training set)")
    p.add_argument("--data-kwargs", default=None, metavar="K=V,...", help="keyword arguments of the data factory")
    p.add_argument("--split", choices=("train", "test"), default="train", help="data split (default train)")
    p.add_argument("--n", type=_positive_int, default=None, help="keep the first N examples of the data set")
    p.add_argument("--loss", default=None, metavar="LOSS", help="ce (default), mse or an import path pkg.module:loss_fn")
    p.add_argument("--search-path", action="append", default=None, metavar="DIR",
                   help="extra folder for import paths (the checkpoint folder, its parent and . always are)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch threads")
    p.add_argument("--keep-directions", action=argparse.BooleanOptionalAction, default=True,
                   help="store the directions in the result, to evaluate the same plane elsewhere (default on)")
    p.add_argument("--skip-existing", action=argparse.BooleanOptionalAction, default=True,
                   help="keep a current result of the same checkpoints and options (default on)")
    p.add_argument("--plot", action="store_true", help="draw the result's figures beside it")
    p.add_argument("--formats", default="png,pdf", help="figure formats with --plot (default png,pdf)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar")
    p.set_defaults(func=run_slice)
    return p


# --------------------------------------------------------------------------------------------


def _label(path: Path, others: Sequence[Path]) -> str:
    """A checkpoint's label on the figure: its file stem, with its folder when stems repeat."""
    stems = [Path(o).stem for o in others]
    return path.stem if stems.count(path.stem) == 1 else f"{path.parent.name}/{path.stem}"


def _load(path: Path, args: argparse.Namespace, paths: list[str]):
    from landscape.checkpoint import CheckpointError, load_checkpoint
    from landscape.cli_analyze import parse_kwargs

    kwargs = parse_kwargs(args.model_kwargs, "--model-kwargs") if args.model_kwargs else None
    try:
        return load_checkpoint(path, args.model, model_kwargs=kwargs, search_paths=paths)
    except CheckpointError as e:
        if args.model is None and "model spec" in str(e):
            raise CheckpointError(f"{e}; give the model as --model pkg.module:factory (--model-kwargs k=v,...) "
                                  "or a zoo name") from None
        raise


def _has_running_stats(model) -> bool:
    from torch.nn.modules.batchnorm import _NormBase

    return any(isinstance(m, _NormBase) and m.track_running_stats for m in model.modules())


def _check_request(args: argparse.Namespace) -> str:
    """The kind of slice the arguments ask for; every conflicting combination is a ConfigError."""
    n = len(args.checkpoints)
    if args.trajectory is not None:
        if n:
            raise ConfigError(f"--trajectory RUN_DIR takes no checkpoint files (got {n}); the run's checkpoints "
                              "make the plane")
        kind = "trajectory"
    elif n == 0:
        raise ConfigError("give one, two or three checkpoint files, or --trajectory RUN_DIR")
    elif n > 3:
        raise ConfigError(f"{n} checkpoints given; accepted: 1 (a slice around it), 2 (interpolation), "
                          "3 (the plane through them), or --trajectory RUN_DIR")
    else:
        kind = (args.direction, "interpolation", "plane")[n - 1]
    if kind not in DIRECTIONS and args.direction != "random":
        raise ConfigError(f"--direction {args.direction} applies to one checkpoint; with "
                          f"{'--trajectory' if kind == 'trajectory' else f'{n} checkpoints'} the directions are "
                          f"those of the {kind}")
    if kind not in DIRECTIONS and args.ndim is not None:
        want = 1 if kind == "interpolation" else 2
        if args.ndim != want:
            raise ConfigError(f"--ndim {args.ndim}: a slice of kind {kind} is {want}-D")
    if args.orthogonalize and (kind == "interpolation" or (kind in DIRECTIONS and args.ndim == 1)):
        raise ConfigError("--orthogonalize needs two directions (a 2-D slice)")
    return kind


def _trajectory_checkpoints(run_dir: Path, args, paths):
    from landscape.checkpoint import find_checkpoints

    if not run_dir.is_dir():
        raise ConfigError(f"--trajectory {run_dir}: no such folder")
    files = find_checkpoints(run_dir)
    if len(files) < 3:
        raise ConfigError(f"--trajectory {run_dir}: {len(files)} checkpoint(s); the PCA plane of a trajectory "
                          "needs at least 3 (train with save_every=1 or save_every_steps)")
    ckpts = sorted((_load(f, args, paths) for f in files), key=lambda c: (c.step, str(c.path)))
    steps = [c.step for c in ckpts]
    if len(set(steps)) != len(steps):
        dup = sorted({s for s in steps if steps.count(s) > 1})
        raise ConfigError(f"--trajectory {run_dir}: several checkpoints at step(s) {dup}; keep one per step")
    return ckpts


def _default_trajectory_grid(points: dict[str, tuple[float, float]], num: int = 21) -> list[str]:
    """Both axes over the trajectory's extent (origin included) with a 25 % margin."""
    grid = []
    for k in range(2):
        vals = [0.0] + [float(p[k]) for p in points.values()]
        lo, hi = min(vals), max(vals)
        pad = 0.25 * (hi - lo) or 1.0
        grid.append(f"{lo - pad:.6g}:{hi + pad:.6g}:{num}")
    return grid


def _directions(kind: str, ndim: int, model, ckpts, data, args, loss) -> tuple[Any, dict[str, Any], str]:
    """``(directions, points, normalization recorded)`` for :func:`loss_slice`."""
    import torch

    from landscape import directions as D

    labels = [_label(c.path, [x.path for x in ckpts]) for c in ckpts]
    norm_kwargs = dict(normalization=args.normalization, one_d=args.one_d)
    gen = torch.Generator().manual_seed(int(args.seed))

    def random() -> dict:
        return D.random_direction(model, params=args.params, generator=gen, **norm_kwargs)

    if kind == "interpolation":
        a, b = ckpts
        try:
            d = D.checkpoint_direction(model, b.model, params=args.params)
        except D.DirectionError as e:
            raise D.DirectionError(f"{b.path} is not the architecture of {a.path}: {e}") from None
        return d, {labels[0]: {"alpha": 0.0, "step": a.step}, labels[1]: {"alpha": 1.0, "step": b.step}}, "none"
    if kind == "plane":
        a, b, c = ckpts
        try:
            pl = D.plane(model, b.model, c.model, params=args.params, orthogonalize=args.orthogonalize, labels=labels)
        except D.DirectionError as e:
            raise D.DirectionError(f"{a.path}, {b.path}, {c.path}: {e}") from None
        steps = dict(zip(labels, (x.step for x in ckpts)))
        return pl, {k: (v[0], v[1], steps[k]) for k, v in pl.points.items()}, "none"
    if kind == "trajectory":
        try:
            pl = D.trajectory_pca([c.model for c in ckpts], centre=-1, params=args.params,
                                  steps=[c.step for c in ckpts], labels=labels)
        except D.DirectionError as e:
            raise D.DirectionError(f"--trajectory {args.trajectory}: {e}") from None
        return pl, {k: (v[0], v[1], int(pl.steps.get(k, -1))) for k, v in pl.points.items()}, "none"

    # one checkpoint
    first: dict
    if kind == "random":
        first = random()
    elif kind == "momentum":
        first = D.momentum_direction(ckpts[0].momentum(), model, params=args.params, **norm_kwargs)
    elif kind == "gradient":
        first = D.gradient_direction(model, data, params=args.params, loss=loss, batch_size=args.batch_size,
                                     max_samples=args.max_samples,
                                     bn_mode="train" if args.bn_mode == "batch" else "eval", **norm_kwargs)
    else:  # eigenvector
        from landscape.analyses.hessian import hessian_spectrum

        spec = hessian_spectrum(model, data, top_k=ndim, eigenvectors=True, trace=False, density=False,
                                params=args.params, loss=loss, batch_size=args.batch_size,
                                max_samples=args.max_samples, progress=False)
        dirs = D.eigenvector_directions(model, spec, k=ndim, params=args.params)
        if ndim == 2 and args.orthogonalize:
            dirs = list(D.orthogonalize(dirs[0], dirs[1]))
        return (dirs[0] if ndim == 1 else dirs), {}, "none"
    if ndim == 1:
        return first, {}, args.normalization
    second = random()
    if args.orthogonalize:
        first, second = D.orthogonalize(first, second)
    return [first, second], {}, args.normalization


def run_slice(args: argparse.Namespace) -> int:
    """Run the ``slice`` subcommand: 0 when the result was written (or is current), 1 when the
    figures of ``--plot`` failed; bad input raises (exit 2 through :func:`landscape.cli.main`)."""
    import torch

    from landscape import results
    from landscape.analyses.registry import DataOptions
    from landscape.analyses.slices import loss_slice
    from landscape.batch import _load_data, _resolve_ref, check_writable
    from landscape.checkpoint import file_sha256
    from landscape.cli_analyze import parse_kwargs
    from landscape.config import resolve_device
    from landscape.locks import ResultLock
    from landscape.specs import default_search_paths

    kind = _check_request(args)
    grid = parse_grid(args.grid)
    formats = [f.strip().lower() for f in str(args.formats).split(",") if f.strip()]
    if args.plot and (not formats or any(f not in ("png", "pdf", "svg") for f in formats)):
        raise ConfigError(f"--formats {args.formats!r}: accepted are png, pdf, svg")
    out = Path(args.out)
    check_writable(out)
    if args.threads:
        torch.set_num_threads(int(args.threads))

    anchor = Path(args.trajectory) if kind == "trajectory" else Path(args.checkpoints[0])
    paths = [*(args.search_path or ()), *map(str, default_search_paths(anchor))]
    if kind == "trajectory":
        ckpts = _trajectory_checkpoints(anchor, args, paths)
        centre = ckpts[-1]
        run = anchor.resolve().name
    else:
        files = [Path(p) for p in args.checkpoints]
        ckpts = [_load(f, args, paths) for f in files]
        centre = ckpts[0]
        run = files[0].resolve().parent.name
    ndim = 1 if kind == "interpolation" else 2 if kind in ("plane", "trajectory") else (args.ndim or 2)

    if kind in ("interpolation", "plane", "trajectory") and args.bn_mode == "eval" and _has_running_stats(centre.model):
        print(f"landscape slice: note: --bn-mode eval evaluates every point with the BatchNorm running statistics "
              f"of {_label(centre.path, [c.path for c in ckpts])} (buffers are not interpolated), so the other "
              "checkpoints' points have their weights but not their statistics; --bn-mode recompute "
              "re-estimates the statistics at every point", file=sys.stderr)
    device = resolve_device(args.device)
    model = centre.model.to(device)
    for c in ckpts:
        if c is not centre:
            c.model.to(device)
    data_opts = DataOptions.from_dict({
        "dataset": args.data, "split": args.split, "n": args.n,
        "dataset_kwargs": parse_kwargs(args.data_kwargs, "--data-kwargs") if args.data_kwargs else None})
    data_spec = data_opts.resolve(centre.config)
    data = _load_data(json.dumps(data_spec, sort_keys=True), tuple(paths))
    loss_name = args.loss or "ce"
    loss = _resolve_ref(loss_name, paths, instantiate=True)

    sha = {str(c.path): file_sha256(c.path) for c in ckpts}
    labels = [_label(c.path, [x.path for x in ckpts]) for c in ckpts]
    request = {
        "kind": kind, "ndim": ndim, "grid": grid, "normalization": args.normalization, "one_d": args.one_d,
        "params": args.params, "seed": args.seed, "orthogonalize": bool(args.orthogonalize),
        "bn_mode": args.bn_mode, "recompute_batches": args.recompute_batches, "batch_size": args.batch_size,
        "max_samples": args.max_samples, "loss": loss_name, "vmap": bool(args.vmap),
        "autocast": args.autocast, "memory_format": args.memory_format,
        "keep_directions": bool(args.keep_directions),
        # the checkpoints by content (and label), so the same files reached by another path match
        "checkpoints": [{"label": lab, "sha256": s} for lab, s in zip(labels, sha.values())],
    }
    hash_ = results.options_hash("slice", request, data_spec)
    path = results.result_path(out, run, centre.path, "slice", hash_)
    if args.skip_existing and results.existing_result(path, sha[str(centre.path)]) == "current":
        print(f"{path}: exists for these checkpoints and options; kept (--no-skip-existing recomputes it)",
              file=sys.stderr)
    else:
        lock = ResultLock(path)
        if not lock.acquire():
            raise ConfigError(f"{path} is being computed by {lock.describe_holder()}; try again when it is done")
        try:
            dirs, points, normalization = _directions(kind, ndim, model, ckpts, data, args, loss)
            if kind == "trajectory" and (grid is None or isinstance(grid, int)):
                # NUM points over the trajectory's extent: [-1, 1] means nothing in PCA coordinates
                grid_used = _default_trajectory_grid({k: v[:2] for k, v in points.items()}, grid or 21)
            elif grid is None:
                grid_used = DEFAULT_GRID.get(kind, DEFAULT_GRID["random"])
            else:
                grid_used = grid
            ds = loss_slice(model, data, dirs, points=points or None, direction_kind=kind,
                            normalization=normalization, one_d=args.one_d if normalization != "none" else "none",
                            grid=grid_used, bn_mode=args.bn_mode, recompute_batches=args.recompute_batches,
                            batch_size=args.batch_size, max_samples=args.max_samples, loss=loss,
                            params=args.params, vmap=args.vmap, autocast=args.autocast,
                            memory_format=args.memory_format, keep_directions=args.keep_directions,
                            progress=args.progress)
            config = {**json.loads(str(ds.attrs.get("config_json", "{}"))), "slice_request": request}
            results.write_result(
                ds, path, analysis="slice", run=run, step=int(centre.step), checkpoint=centre.path,
                checkpoint_sha256=sha[str(centre.path)], options_hash=hash_,
                config_json=json.dumps(config, sort_keys=True, default=str),
                attrs={"epoch": int(centre.epoch), "device": str(device),
                       "data_json": json.dumps(data_spec, sort_keys=True),
                       "checkpoint_config_json": json.dumps(centre.config, sort_keys=True, default=str),
                       "checkpoints_json": json.dumps(list(sha), default=str)})
        finally:
            lock.release()
    print(path)
    return _plot(path, formats) if args.plot else 0


def _plot(path: Path, formats: list[str]) -> int:
    """The figures of one slice result, beside it: ``<figure>-<options hash>.png`` / ``.pdf``."""
    from landscape.plots.common import PlotError, save
    from landscape.plots.slices import slice_figures
    from landscape.results import read_result

    ds = read_result(path)
    suffix = path.stem.split("-", 1)[1] if "-" in path.stem else ""
    status = 0
    for stem, fn in slice_figures(ds).items():
        try:
            fig = fn(ds)
        except PlotError as e:
            print(f"landscape slice: could not draw {stem}: {e}", file=sys.stderr)
            status = 1
            continue
        for p in save(fig, path.parent / (f"{stem}-{suffix}" if suffix else stem), formats):
            print(p)
    return status
