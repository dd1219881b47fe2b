"""Analyse folders of checkpoints: resumable, failure-isolated, safe to run twice, on any executor.

:func:`analyze` makes one :class:`Task` per (checkpoint, analysis): a frozen, picklable
dataclass (checkpoint path, analysis name, options as plain dicts, result path) run by
:func:`run_task` in whatever process the executor chooses; it loads the checkpoint itself, so no
model object ever crosses a process boundary. Each task:

- sets its torch thread count (``threads``; else ``$SLURM_CPUS_PER_TASK`` when set);
- catches every error of its checkpoint/analysis and returns it as text with its ``cause``
  (``disk full``, ``permission``, ``memory``, ``checkpoint``, ``config``, ``error``), so one bad
  file never stops the others;
- skips a result that already exists for the same options and the same checkpoint bytes
  (also after a Slurm requeue), and writes new ones atomically through :mod:`landscape.results`;
- holds a per-result lock (:mod:`landscape.locks`) while it computes, so a second run on the
  same results folder skips what the first is computing instead of doing it again.

Executors: serial in this process by default; ``workers=N`` runs N spawned local workers
(:mod:`landscape.pool`: a worker that dies fails only its task, after one retry in a fresh
worker; the workers exit when the driver dies); or pass any object with ``submit(fn, *args)``
whose futures have ``.result()``: ``concurrent.futures`` pools, a ``dask.distributed.Client``,
or ``submitit.AutoExecutor`` (Slurm; all tasks go out as one job array via ``map_array``, and a
preempted or timed-out task is requeued through the callable's ``checkpoint`` method, resuming
via ``skip_existing``).

``<out>/summary.json`` is written atomically at the end of every run (also an interrupted
one), merged with the entries of earlier runs on the same folder.
"""

from __future__ import annotations

import concurrent.futures as cf
import errno
import functools
import inspect
import json
import logging
import os
import shutil
import socket
import tempfile
import time
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from landscape import results
from landscape.analyses import registry
from landscape.config import ConfigError, resolve_device
from landscape.locks import ResultLock
from landscape.progress import Progress

log = logging.getLogger("landscape")

PathLike = str | os.PathLike


@dataclass
class Summary:
    """Outcome of :func:`analyze`; also written to ``<out>/summary.json``.

    Each entry of ``done`` / ``skipped`` / ``failed`` is a dict with ``checkpoint``,
    ``analysis``, ``run``, ``result`` (the ``.nc`` path), ``seconds`` and, for failures,
    ``error`` (one line: type and message), ``cause`` and ``traceback``. ``rejected``: paths
    found in the folders that are not analysed (not regular files, links leaving the folder),
    each ``{"path", "reason"}``. ``write_error``: why ``summary.json`` could not be written
    (``""`` when it was).
    """

    out: Path
    done: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False
    write_error: str = ""

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted and not self.write_error

    def add(self, record: dict[str, Any]) -> None:
        {"done": self.done, "skipped": self.skipped}.get(record["status"], self.failed).append(record)

    def counts(self) -> dict[str, int]:
        return {"done": len(self.done), "skipped": len(self.skipped), "failed": len(self.failed)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "counts": self.counts(),
            "seconds": round(self.seconds, 3),
            "interrupted": self.interrupted,
            "done": self.done,
            "skipped": self.skipped,
            "failed": self.failed,
            "rejected": self.rejected,
        }

    def __str__(self) -> str:
        s = f"{len(self.done)} done, {len(self.skipped)} skipped, {len(self.failed)} failed in {self.seconds:.1f}s"
        return s + (" (interrupted)" if self.interrupted else "")


# ----------------------------------------------------------------------------- the task


@dataclass(frozen=True)
class Task:
    """One (checkpoint, analysis) unit of work: plain data, picklable, the same in every executor.

    ``options`` / ``data`` are the validated options as plain dicts; ``entry`` the registry
    entry as import strings (:func:`landscape.analyses.registry.entry_spec`) so a fresh process
    can run a user-registered analysis; ``hash`` the options hash in the result's file name.
    ``model``: ``None`` (the spec stored in the checkpoint) or ``{"name": zoo name or import
    path, "kwargs": {...}}`` (:func:`landscape.specs.spec_to_json`), which the worker imports;
    ``search_paths``: extra folders for import paths (the checkpoint's folder and its parent
    are always searched).
    """

    checkpoint: str
    run: str
    analysis: str
    result: str
    hash: str
    options: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    entry: dict[str, Any] | None = None
    skip_existing: bool = True
    threads: int | None = None
    device: str = "auto"
    model: dict[str, Any] | str | None = None
    search_paths: tuple[str, ...] = ()

    def record(self, status: str, t0: float, cpu0: float | None = None, **extra: Any) -> dict[str, Any]:
        """A summary entry for this task."""
        rec = {
            "checkpoint": self.checkpoint,
            "analysis": self.analysis,
            "run": self.run,
            "result": self.result,
            "status": status,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        if cpu0 is not None:
            # CPU time of the task's process (all its threads): far below `seconds` means the task
            # waited for a CPU (an oversubscribed machine), not that it computed slowly.
            rec["cpu_seconds"] = round(time.process_time() - cpu0, 3)
        rec.update(extra)
        return rec

    def failure(self, exc: BaseException, t0: float, cpu0: float | None = None, tb: str | None = None,
                cause: str | None = None, **extra: Any) -> dict[str, Any]:
        """A ``failed`` summary entry naming the error and its cause."""
        cause = cause or failure_cause(exc)
        error = f"{type(exc).__name__}: {exc}".strip()
        if cause == "disk full":
            error = f"disk full: {_disk_of(Path(self.result))} while writing {self.result}: {error}"
        elif cause == "permission":
            error = f"permission denied: cannot write {self.result}: {error}"
        rec = self.record("failed", t0, cpu0, error=error, cause=cause, **extra)
        rec["traceback"] = tb if tb is not None else "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return rec


def failure_cause(exc: BaseException) -> str:
    """The cause named in the summary: ``disk full``, ``permission``, ``memory``, ``checkpoint``,
    ``config`` or ``error``.

    Example:
        >>> import errno
        >>> failure_cause(OSError(errno.ENOSPC, "No space left on device")), failure_cause(MemoryError())
        ('disk full', 'memory')
    """
    from landscape.checkpoint import CheckpointError
    from landscape.config import ConfigError

    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError
        return "memory"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return "disk full"
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission"
    if isinstance(exc, CheckpointError):
        return "checkpoint"
    if isinstance(exc, ConfigError):
        return "config"
    return "error"


def _disk_of(path: Path) -> str:
    """``"the file system at /mnt (1.2 kB free)"`` for the nearest existing folder of ``path``."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    mount = p.resolve()
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    try:
        free = f"{shutil.disk_usage(p).free} bytes free"
    except OSError:
        free = "free space unknown"
    return f"the file system at {mount} ({free})"


# Python objects given to analyze() that have no import path (a lambda, a Dataset instance, a
# loss module instance): usable by tasks that run in this same process (serial runs) only.
_LOCAL: dict[str, Any] = {}
LOCAL_PREFIX = "local:"


def _local_ref(obj: Any, what: str) -> str:
    label = getattr(obj, "__qualname__", None) or type(obj).__name__
    ref = f"{LOCAL_PREFIX}{what}:{label}"
    _LOCAL[ref] = obj
    return ref


def _local(ref: str) -> Any:
    try:
        return _LOCAL[ref]
    except KeyError:
        raise ConfigError(
            f"{ref[len(LOCAL_PREFIX):]} was given to analyze() as a Python object without an import "
            "path, which only tasks run serially in the same process can use; pass an import path "
            "'package.module:name' for worker processes and Slurm"
        ) from None


def _search_paths(task: Task) -> list[str]:
    from landscape.specs import default_search_paths

    return [*task.search_paths, *map(str, default_search_paths(task.checkpoint))]


@functools.lru_cache(maxsize=4)
def _load_data(spec_json: str, search_paths: tuple[str, ...] = ()):
    # Cached per process: consecutive tasks on checkpoints of one run share their data set.
    from landscape.data import get_dataset
    from landscape.specs import is_import_path, resolve_data

    spec = json.loads(spec_json)
    name = spec["dataset"]
    if name.startswith(LOCAL_PREFIX):
        ds = resolve_data(_local(name), spec["split"], spec["dataset_kwargs"])
    elif is_import_path(name):
        ds = resolve_data(name, spec["split"], spec["dataset_kwargs"], search_paths=search_paths)
    else:
        ds = get_dataset(name, spec["split"], root=spec["data_root"], augment=False, **spec["dataset_kwargs"])
    return _first(ds, spec["n"], name)


def _first(ds: Any, n: int | None, name: str) -> Any:
    """The first ``n`` examples of a data set (``ArrayDataset.subset`` or a ``torch`` ``Subset``)."""
    if n is None:
        return ds
    if hasattr(ds, "subset"):
        return ds.subset(n)
    if hasattr(ds, "__len__") and hasattr(ds, "__getitem__"):
        import torch.utils.data

        return torch.utils.data.Subset(ds, range(min(n, len(ds))))
    raise ConfigError(f"data.n={n} needs a map-style data set (with len() and indexing); {name!r} gave a {type(ds).__name__}")


def _resolve_ref(value: Any, search_paths: list[str], instantiate: bool = False) -> Any:
    """An option naming a callable (``loss``, ``batch_fn``, ``output_fn``) as the analyses take it:
    other strings (``"ce"``) stay, an import path or a local reference becomes the object,
    searched also beside the checkpoint (a loss class is instantiated without arguments)."""
    from landscape.specs import import_object, is_import_path

    if not isinstance(value, str):
        return value
    if value.startswith(LOCAL_PREFIX):
        obj = _local(value)
    elif is_import_path(value):
        obj = import_object(value, search_paths=search_paths)
    else:
        return value
    return obj() if instantiate and isinstance(obj, type) else obj


def run_task(task: Task) -> dict[str, Any]:
    """Run one (checkpoint, analysis) task; never raises for errors of the task itself.

    Returns a record for the summary with ``status`` ``done``, ``skipped`` or ``failed``.
    A result that another process is computing (its lock is held) is ``skipped`` with a
    ``note`` naming that process.
    """
    import torch

    from landscape.checkpoint import file_sha256

    t0, cpu0 = time.perf_counter(), time.process_time()
    old_threads = torch.get_num_threads()
    lock = ResultLock(task.result)
    try:
        threads = task.threads or int(os.environ.get("SLURM_CPUS_PER_TASK", "0") or 0) or None
        if threads:
            torch.set_num_threads(int(threads))
        sha = file_sha256(task.checkpoint)
        if task.skip_existing and results.existing_result(task.result, sha) == "current":
            return task.record("skipped", t0, cpu0, note="result exists")
        if not lock.acquire():
            return task.record("skipped", t0, cpu0, locked_by=lock.holder,
                               note=f"being computed by {lock.describe_holder()}, another run on this "
                                    "results folder; re-run later to pick it up if that run fails")
        # Checked again under the lock: another run may have finished it a moment ago.
        state = results.existing_result(task.result, sha)
        if task.skip_existing and state == "current":
            return task.record("skipped", t0, cpu0, note="result exists")
        step = _compute_and_write(task, sha)
        note = "replaced a result of an older version of this checkpoint file" if state == "stale" else ""
        return task.record("done", t0, cpu0, step=step, **({"note": note} if note else {}))
    except Exception as exc:  # noqa: BLE001 - the point: one failure must not stop the batch
        return task.failure(exc, t0, cpu0)
    finally:
        lock.release()
        torch.set_num_threads(old_threads)


def _compute_and_write(task: Task, sha: str) -> int:
    import xarray as xr

    from landscape.checkpoint import CheckpointError, load_checkpoint

    registry.ensure_registered(task.analysis, task.entry)
    analysis = registry.get_analysis(task.analysis)
    options = analysis.options(task.options)
    paths = _search_paths(task)
    if task.model is None:
        try:
            ckpt = load_checkpoint(task.checkpoint)
        except CheckpointError as e:
            if "model spec" not in str(e):
                raise
            raise CheckpointError(f"{e}; with landscape analyze give the model as --model pkg.module:factory "
                                  "(--model-kwargs k=v,...), a [model] table, or analyze(model=...)") from None
    else:
        from landscape.specs import resolve_model

        spec = _local(task.model) if isinstance(task.model, str) else resolve_model(task.model, search_paths=paths)
        ckpt = load_checkpoint(task.checkpoint, model=spec.build())
    device = resolve_device(task.device)
    model = ckpt.model.to(device)
    data, data_spec = None, None
    if analysis.needs_data:
        data_spec = registry.DataOptions.from_dict(task.data).resolve(ckpt.config)
        data = _load_data(json.dumps(data_spec, sort_keys=True), tuple(paths))
    kwargs = options.to_dict()
    for key in ("loss", "batch_fn", "output_fn"):  # import paths found beside the checkpoints too
        if key in kwargs:
            kwargs[key] = _resolve_ref(kwargs[key], paths, instantiate=key == "loss")
    if "progress" in inspect.signature(analysis.fn).parameters:
        kwargs["progress"] = False  # the batch runner reports progress per task
    if analysis.extra_inputs is not None:
        kwargs.update(analysis.extra_inputs(ckpt))
    ds = analysis.fn(model, data, **kwargs)
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"analysis {analysis.name!r} returned {type(ds).__name__}, not an xarray.Dataset")
    results.write_result(
        ds,
        task.result,
        analysis=analysis.name,
        run=task.run,
        step=ckpt.step,
        checkpoint=task.checkpoint,
        checkpoint_sha256=sha,
        options_hash=task.hash,
        config_json=options.to_json(),
        attrs={
            "epoch": int(ckpt.epoch),
            "device": str(device),
            "data_json": json.dumps(data_spec, sort_keys=True) if data_spec else "",
            "checkpoint_config_json": json.dumps(ckpt.config, sort_keys=True, default=str),
        },
    )
    return int(ckpt.step)


class RunTask:
    """Picklable callable around :func:`run_task` that submitit can requeue.

    On preemption or time-out submitit calls ``checkpoint``; requeuing the same task is enough,
    because a finished result is skipped and an unfinished one was never renamed into place.
    """

    def __call__(self, task: Task) -> dict[str, Any]:
        return run_task(task)

    def checkpoint(self, task: Task):
        import submitit

        return submitit.helpers.DelayedSubmission(self, task)


# ----------------------------------------------------------------------------- the driver


def _checkpoints_with_runs(paths_or_folder: PathLike | Iterable[PathLike],
                           rejected: list[dict[str, str]] | None = None) -> list[tuple[Path, str]]:
    """(checkpoint, run name); run = folder relative to the given folder, or its own name.

    Paths that look like checkpoints but are not analysed (devices, FIFOs, dangling links, links
    leaving the folder: :func:`landscape.checkpoint.find_checkpoints`) go to ``rejected``.
    """
    from landscape.checkpoint import find_checkpoints

    items = [paths_or_folder] if isinstance(paths_or_folder, (str, os.PathLike)) else list(paths_or_folder)
    out: list[tuple[Path, str]] = []
    for item in map(Path, items):
        refused: list = []
        found = find_checkpoints(item, rejected=refused)
        if rejected is not None:
            rejected.extend(r.as_json() for r in refused)
        for ck in found:
            if item.is_dir() and ck != item:
                try:
                    rel = ck.parent.absolute().relative_to(item.absolute()).as_posix()
                except ValueError:  # a path reported resolved
                    rel = ck.parent.resolve().relative_to(item.resolve()).as_posix()
                out.append((ck, item.resolve().name if rel == "." else rel))
            else:
                out.append((ck, item.resolve().parent.name))
    return out


def _unique_results(ckpts: list[tuple[Path, str]], out: Path) -> list[tuple[Path, str]]:
    # Result paths are one-to-one in (run, checkpoint name) (results.result_path); only the same
    # run and file name reached twice - files named one by one from several folders - can meet.
    seen: dict[Path, Path] = {}
    unique: list[tuple[Path, str]] = []
    for ck, run in ckpts:
        key = results.result_path(out, run, ck, "x", "0" * results.HASH_LEN).parent
        if key in seen:
            if seen[key].resolve() == ck.resolve():
                continue
            raise ValueError(
                f"{seen[key]} and {ck} would share the results folder {key}; "
                "pass their common parent folder (run names are folders relative to it) or rename one"
            )
        seen[key] = ck
        unique.append((ck, run))
    return unique


def check_writable(out: Path) -> None:
    """Fail early, naming the folder, when results cannot be written to ``out``."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".landscape-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        why = {"disk full": "the disk is full", "permission": "permission denied"}.get(failure_cause(e), "cannot write")
        raise results.ResultError(
            f"results folder {out} is not writable ({why}: {e.strerror or e}); choose another --out/out="
        ) from None


def _default_threads(workers: int | None) -> int | None:
    if not workers or workers <= 1:
        return None
    return max(1, (os.cpu_count() or 1) // workers)


def _is_submitit(executor: Any) -> bool:
    return type(executor).__module__.startswith("submitit") and hasattr(executor, "map_array")


def analyze(
    paths_or_folder: PathLike | Iterable[PathLike],
    analyses: str | Iterable[str],
    *,
    options: Mapping[str, Any] | None = None,
    out: PathLike = "results",
    executor: Any = None,
    workers: int | None = None,
    skip_existing: bool = True,
    threads: int | None = None,
    device: str = "auto",
    progress: bool = True,
    model: Any = None,
    model_kwargs: Mapping[str, Any] | None = None,
    data: Any = None,
    data_kwargs: Mapping[str, Any] | None = None,
    loss: Any = None,
    search_paths: Iterable[PathLike] = (),
) -> Summary:
    """Run analyses on every checkpoint under a folder; one result file per (checkpoint, analysis).

    Args:
        paths_or_folder: a folder (searched recursively for ``*.pt``/``*.pth``; ``last.pt`` beside
            ``epoch_*.pt`` is skipped as a duplicate), a file, or a list of them.
        analyses: registry names, a list or ``"hessian,sharpness"``.
        options: per-analysis options and data options, ``{"hessian": {"top_k": 3},
            "data": {"n": 512}}`` (dicts or Options objects), validated strictly before any
            work starts.
        out: results folder: ``<out>/<run>/<checkpoint>/<analysis>-<hash>.nc`` and
            ``<out>/summary.json``. The run is the checkpoint's folder relative to the folder
            given (its own name for checkpoints directly inside it). It must be writable
            (checked before any work).
        executor: anything with ``submit()``/``.result()`` (see module docstring); ``None``
            runs serially here, or in local worker processes when ``workers`` > 1.
        workers: number of local worker processes (ignored when ``executor`` is given). A task
            whose worker dies (killed, out of memory, segfault) or raises ``MemoryError`` is
            retried once in a fresh worker; the other tasks go on.
        skip_existing: skip tasks whose result exists with the same options and checkpoint
            bytes; ``False`` recomputes and replaces them.
        threads: torch threads per task; default: all cores serially, cores/workers in a pool,
            ``$SLURM_CPUS_PER_TASK`` on Slurm, else torch's default.
        device: ``auto`` (CUDA when the worker has it), ``cpu``, ``cuda``, ``cuda:N``.
        progress: show a progress bar / log lines.
        model: the model the weights are loaded into, needed for foreign checkpoints (a
            ``state_dict`` from a plain PyTorch loop, Lightning, safetensors): an ``nn.Module``
            class or factory, an import path ``"package.module:factory"`` or a zoo name (also
            the ``[model]`` table: ``spec``, ``kwargs``). Default: the spec stored in a landscape
            checkpoint.
        model_kwargs: keyword arguments of the model factory.
        data: the analysed data when not the checkpoint's own training set: a data set name, an
            import path or a factory (called with ``split=`` when it takes one), or a data
            object (also ``[data] dataset = ...``).
        data_kwargs: keyword arguments of the data factory (``[data] dataset_kwargs``).
        loss: ``"ce"``, ``"mse"``, an import path or a callable ``loss(output, target)``; put into
            the ``loss`` option of every analysis that reads data.
        search_paths: extra folders searched for import paths (the checkpoint's folder, its
            parent and the current folder always are).

    Objects without an import path (a lambda, a ``Dataset`` instance, a loss module built in
    the script) can be used by serial runs only; workers and Slurm jobs import everything by name.

    Returns:
        A :class:`Summary` (done, skipped, failed with error text and cause), also merged into
        ``summary.json``.

    Raises:
        ConfigError: bad options, before any task runs. ResultError: ``out`` not writable.
        ValueError: no checkpoints, or two checkpoints that would share a results folder.

    Example:
        >>> s = analyze("checkpoints/", "hessian,sharpness", out="results", workers=2)  # doctest: +SKIP
        >>> print(s)  # doctest: +SKIP
        16 done, 0 skipped, 0 failed in 41.2s
    """
    t0 = time.perf_counter()
    started = time.time()
    names = registry.parse_analyses(analyses)
    items = [paths_or_folder] if isinstance(paths_or_folder, (str, os.PathLike)) else list(paths_or_folder)
    local_ok = executor is None and not (workers and workers > 1)
    paths = _driver_search_paths(items, search_paths)
    options, model_json, loss_ref = _sources(options, model, model_kwargs, data, data_kwargs, loss, local_ok, paths)
    resolved, data_opts = registry.resolve_options(names, options, loss=loss_ref)
    _check_data_source(data_opts, names, paths, resolved)
    out = Path(out)
    rejected: list[dict[str, str]] = []
    ckpts = _unique_results(_checkpoints_with_runs(items, rejected), out)
    for r in rejected:
        log.warning("not analysed: %s: %s", r["path"], r["reason"])
    if not ckpts:
        raise ValueError(
            f"no checkpoints (*.pt, *.pth, *.ckpt, *.safetensors, checkpoint-N/) found in {paths_or_folder}"
            + (f"; not analysed: {'; '.join(r['path'] + ': ' + r['reason'] for r in rejected)}" if rejected else "")
        )
    check_writable(out)
    reserve = _reserve_space(out, len(ckpts) * len(names))
    if threads is None and executor is None:
        threads = _default_threads(workers)

    summary = Summary(out=out, rejected=rejected)
    # The model spec is part of what a result depends on; hashes without one stay as they were.
    hashed_data = {**data_opts.to_dict(), **({"model": model_json} if model_json is not None else {})}
    # An analysis whose options split into several tasks (a slice in parts: `split_tasks`) gets
    # one task, hash and result file per piece, so the pieces resume and spread over workers.
    pieces = {n: _split(resolved[n]) for n in names}
    hashes = {(n, i): results.options_hash(n, o, hashed_data) for n in names for i, o in enumerate(pieces[n])}
    entries = {n: registry.entry_spec(n) for n in names}
    sha_cache: dict[Path, str | None] = {}

    def checkpoint_sha(ck: Path) -> str | None:
        if ck not in sha_cache:
            from landscape.checkpoint import file_sha256

            try:
                sha_cache[ck] = file_sha256(ck)
            except OSError:
                sha_cache[ck] = None
        return sha_cache[ck]

    tasks: list[Task] = []
    for ck, run in ckpts:
        for n, i in hashes:
            path = results.result_path(out, run, ck, n, hashes[n, i])
            task = Task(checkpoint=str(ck.resolve()), run=run, analysis=n, result=str(path), hash=hashes[n, i],
                        options=pieces[n][i].to_dict(), data=data_opts.to_dict(), entry=entries[n],
                        skip_existing=skip_existing, threads=threads, device=device, model=model_json,
                        search_paths=tuple(paths))
            if skip_existing and path.exists():
                sha = checkpoint_sha(ck)
                if sha is not None and results.existing_result(path, sha) == "current":
                    summary.add(task.record("skipped", time.perf_counter(), note="result exists"))
                    continue
            tasks.append(task)

    bar = Progress(len(tasks), "analyze", enabled=progress and bool(tasks))

    def done(rec: dict[str, Any]) -> None:
        summary.add(rec)
        bar.update(postfix=f"{len(summary.failed)} failed")

    try:
        if executor is None and workers and workers > 1 and len(tasks) > 1:
            _run_isolated(tasks, min(workers, len(tasks)), done)
        elif executor is None:
            for task in tasks:
                done(run_task(task))
        else:
            _run_on(executor, tasks, done)
    except KeyboardInterrupt:
        summary.interrupted = True
        raise
    finally:
        bar.close()
        summary.seconds = time.perf_counter() - t0
        write_summary(summary, started, reserve=reserve)
    for rec in summary.failed:
        log.warning("failed: %s [%s]: %s", rec["checkpoint"], rec["analysis"], rec["error"])
    if summary.write_error:
        log.error("%s", summary.write_error)
    return summary


def _split(options: Any) -> list[Any]:
    """The options of each task an analysis' options stand for: ``options.split_tasks()`` when
    the options class has it (slices in parts), else ``[options]``."""
    split = getattr(options, "split_tasks", None)
    return list(split()) if callable(split) else [options]


def _driver_search_paths(items: list[Any], extra: Iterable[PathLike]) -> list[str]:
    from landscape.specs import default_search_paths

    found: list[str] = [str(Path(p).absolute()) for p in extra]
    for item in items:
        for p in default_search_paths(item):
            if str(p) not in found:
                found.append(str(p))
    return found


def _sources(options: Mapping[str, Any] | None, model: Any, model_kwargs: Any, data: Any, data_kwargs: Any,
             loss: Any, local_ok: bool, paths: list[str]) -> tuple[dict[str, Any], Any, str | None]:
    """Fold the model/data/loss arguments into the option tables; check the model now.

    Returns the options (``data`` table updated), the model as tasks carry it (JSON or a local
    reference; ``None`` = the checkpoint's own spec) and the loss as an options string.
    """
    from landscape.specs import SpecError, import_path_of, resolve_model, spec_to_json

    options = dict(options or {})
    table = registry.model_options(options)
    options.pop("model", None)
    if model is None and table.spec is not None:
        model, model_kwargs = table.spec, {**(table.kwargs or {}), **dict(model_kwargs or {})}
    elif model is None and model_kwargs:
        raise ConfigError("model_kwargs given without model")
    model_json: Any = None
    if model is not None:
        spec = resolve_model(model, model_kwargs, search_paths=paths)
        spec.build()  # a factory that raises, bad kwargs, a too large model: reported before any task
        if spec.importable:
            model_json = spec.to_json()
        elif local_ok:
            model_json = _local_ref(spec, "model")
        else:
            spec.to_json()  # raises why workers cannot import it
    if data is not None or data_kwargs is not None:
        table_data = options.get("data")
        d = dict(table_data.to_dict() if isinstance(table_data, registry.DataOptions) else table_data or {})
        if data is not None:
            if isinstance(data, str):
                d["dataset"] = data
            else:
                try:
                    d["dataset"] = spec_to_json(data)["name"]
                except SpecError:
                    if not local_ok:
                        raise
                    d["dataset"] = _local_ref(data, "data")
        if data_kwargs is not None:
            d["dataset_kwargs"] = dict(data_kwargs)
        options["data"] = d
    loss_ref = None
    if loss is not None:
        if isinstance(loss, str):
            loss_ref = loss
        else:
            try:
                loss_ref = import_path_of(loss)
            except SpecError:
                if not local_ok:
                    raise
                loss_ref = _local_ref(loss, "loss")
    return options, model_json, loss_ref


def _check_data_source(data_opts: registry.DataOptions, names: list[str], paths: list[str],
                       resolved: Mapping[str, Any]) -> None:
    """A data set named for the whole run must import, and hold the examples every analysis asks
    for, before any task runs (so ``sharpness.n=1024`` on 256 examples is one message, not N
    failed tasks). The checkpoints' own data sets (no ``data.dataset``) are checked per task."""
    from landscape.specs import import_object, is_import_path

    using = [n for n in names if registry.get_analysis(n).needs_data]
    if not data_opts.dataset or not using:
        return
    if is_import_path(data_opts.dataset):
        import_object(data_opts.dataset, search_paths=paths)
    needs = {}
    for n in using:
        required = getattr(resolved[n], "required_samples", None)
        need = required() if callable(required) else None
        if need is not None:
            needs[n] = need
    if not needs:
        return
    spec = data_opts.resolve(None)
    ds = _load_data(json.dumps(spec, sort_keys=True), tuple(paths))
    try:
        size = len(ds)
    except TypeError:  # an iterable of batches: its length is known only by iterating it
        return
    short = {n: k for n, k in needs.items() if k > size}
    if short:
        name, need = max(short.items(), key=lambda kv: kv[1])
        raise ConfigError(
            f"options conflict: {name} needs {need} examples but data set {data_opts.dataset!r} "
            f"(split {data_opts.split!r}) holds {size}; lower {name}'s sample count (e.g. "
            f"--set {name}.{'n' if name == 'sharpness' else 'max_samples'}={size}) or give more data"
        )


def _run_isolated(tasks: list[Task], workers: int, done) -> None:
    from landscape.pool import WorkerDeath, run_isolated

    t0 = time.perf_counter()
    for task, rec, attempts in run_isolated(RunTask(), tasks, workers, retry_if=lambda r: r.get("cause") == "memory"):
        if attempts > 1 and not isinstance(rec, WorkerDeath):
            rec = {**rec, "attempts": attempts}
        if isinstance(rec, WorkerDeath):
            rec = task.record(
                "failed", t0, cause=rec.cause, attempts=rec.attempts,
                error=f"WorkerDeath: {rec.detail}, in each of {rec.attempts} attempts (each in a fresh "
                      "worker process); the other tasks were not affected",
                traceback="",
            )
        done(rec)


def _run_on(executor: Any, tasks: list[Task], done) -> None:
    fn = RunTask()
    submitted_at = time.perf_counter()
    if _is_submitit(executor):
        futures = executor.map_array(fn, tasks)  # one Slurm job array
    else:
        futures = [executor.submit(fn, task) for task in tasks]
    by_future = {id(f): t for f, t in zip(futures, tasks)}
    if all(isinstance(f, cf.Future) for f in futures):
        order = cf.as_completed(futures)
    else:
        order = iter(futures)
    for f in order:
        task = by_future[id(f)]
        try:
            rec = f.result()
        except Exception as exc:  # noqa: BLE001 - a dead worker or a failed job is one failed task
            rec = task.failure(exc, submitted_at, tb=_worker_death_hint(exc),
                               cause="killed" if isinstance(exc, cf.process.BrokenProcessPool) else None)
        done(rec)


def _worker_death_hint(exc: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc))
    if isinstance(exc, cf.process.BrokenProcessPool):
        text += (
            "A worker process died (killed, out of memory, or a crash in native code); a "
            "concurrent.futures pool then fails every task it holds. Use workers=N instead of "
            "your own pool to have only the dying task fail. Results already written are "
            "complete; re-run the same command to finish the rest.\n"
        )
    return text


# ----------------------------------------------------------------------------- summary.json


def _merge_entries(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entries keyed by result path; a new entry replaces the old one, except that "skipped"
    never hides an earlier "done" (which says when and how it was computed)."""
    merged: dict[str, dict[str, Any]] = {}
    for rec in old:
        if isinstance(rec, dict) and "result" in rec:
            merged[str(rec["result"])] = rec
    for rec in new:
        key = str(rec["result"])
        if rec["status"] == "skipped" and merged.get(key, {}).get("status") == "done":
            continue
        merged[key] = rec
    return list(merged.values())


def _reserve_space(out: Path, n_tasks: int) -> Path | None:
    """Hold disk space for summary.json (32 KiB + 1 KiB per task) while the run fills the disk.

    It is freed just before the summary is written, so the summary fits also when the results
    filled the disk. The reserve has a temporary name of :mod:`landscape.atomic`, so the next
    write of summary.json removes it if this process is killed.
    """
    from landscape.atomic import temporary_name

    path = temporary_name(out / "summary.json")
    size = min(32 * 1024 + 1024 * n_tasks, 64 << 20)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError:
        return None
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, size)
        else:  # pragma: no cover
            os.write(fd, b"\0" * size)
    except OSError:
        pass  # no room even for the reserve: write_summary still tries
    finally:
        os.close(fd)
    return path


def write_summary(summary: Summary, started: float | None = None, *, reserve: Path | None = None) -> Path | None:
    """Merge ``summary`` into ``<out>/summary.json`` (atomically, under a lock, so concurrent runs
    on one folder keep each other's entries). On a full disk the ``reserve`` file (see
    :func:`analyze`) is freed and the write retried, then retried without tracebacks. On failure
    ``summary.write_error`` says why and ``None`` is returned; nothing is raised, so the caller
    still gets the summary."""
    path = summary.out / "summary.json"
    lock = ResultLock(path)
    try:
        lock.acquire(wait=60.0)  # after a minute, write anyway: a lost merge beats no summary
        for attempt in range(3):
            try:
                return _write_summary(summary, started, path, slim=attempt == 2)
            except OSError as e:
                if failure_cause(e) != "disk full" or attempt == 2:
                    raise
                if reserve is not None:
                    reserve.unlink(missing_ok=True)
                    reserve = None
        return None  # pragma: no cover
    except OSError as e:
        where = f" ({_disk_of(path)})" if failure_cause(e) == "disk full" else ""
        summary.write_error = f"could not write {path}{where}: {type(e).__name__}: {e}"
        return None
    finally:
        lock.release()
        if reserve is not None:
            reserve.unlink(missing_ok=True)


def _write_summary(summary: Summary, started: float | None, path: Path, slim: bool) -> Path:
    previous: dict[str, Any] = {}
    note = ""
    if path.exists():
        try:
            previous = results.read_json(path)
            if not isinstance(previous, dict):
                raise results.ResultError(f"{path}: not a JSON object")
        except results.ResultError as e:
            previous, note = {}, f"the previous summary.json could not be read and was replaced ({e})"
    old = [r for st in ("done", "skipped", "failed") for r in previous.get(st, []) if isinstance(r, dict)]
    entries = _merge_entries(old, [r for r in (*summary.done, *summary.skipped, *summary.failed)])
    rejected = {str(r.get("path")): r for r in [*previous.get("rejected", []), *summary.rejected] if isinstance(r, dict)}
    by_status = {st: [r for r in entries if r.get("status", "failed") == st] for st in ("done", "skipped")}
    by_status["failed"] = [r for r in entries if r.get("status") not in ("done", "skipped")]
    doc = {
        "out": str(summary.out),
        "counts": {k: len(v) for k, v in by_status.items()},
        "last_run": {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": started,
            "seconds": round(summary.seconds, 3),
            "interrupted": summary.interrupted,
            "counts": summary.counts(),
        },
        "seconds": round(summary.seconds, 3),
        "interrupted": summary.interrupted,
        **({"note": note} if note else {}),
        **by_status,
        "rejected": list(rejected.values()),
    }
    if slim:  # the disk is full: the entries without their tracebacks
        doc = {k: [{kk: vv for kk, vv in r.items() if kk != "traceback"} for r in v] if k in by_status else v
               for k, v in doc.items()}
    results.write_json(path, doc)
    return path


__all__ = ["RunTask", "Summary", "Task", "analyze", "check_writable", "failure_cause", "run_task", "write_summary"]
