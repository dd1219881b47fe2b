"""Analyse folders of checkpoints: resumable, failure-isolated, on any executor.

:func:`analyze` makes one task per (checkpoint, analysis). A task is a small picklable dict
(checkpoint path, analysis name, options as plain dicts, result path) run by :func:`run_task`
in whatever process the executor chooses; it loads the checkpoint itself, so no model object
ever crosses a process boundary. Each task:

- sets its torch thread count (``threads``; else ``$SLURM_CPUS_PER_TASK`` when set);
- catches every error of its checkpoint/analysis and returns it as text, so one bad file never
  stops the others (a worker process that dies is reported by the driver the same way);
- skips a result that already exists for the same options and the same checkpoint bytes
  (also after a Slurm requeue), and writes new ones atomically through :mod:`landscape.results`.

Executors: serial in this process by default; ``workers=N`` starts a local
``ProcessPoolExecutor`` (spawned workers, safe with CUDA); or pass any object with
``submit(fn, *args)`` whose futures have ``.result()``: ``concurrent.futures`` pools, a
``dask.distributed.Client``, or ``submitit.AutoExecutor`` (Slurm; all tasks go out as one job
array via ``map_array``, and a preempted or timed-out task is requeued through the callable's
``checkpoint`` method, resuming via ``skip_existing``).
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import json
import logging
import multiprocessing
import os
import time
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from landscape import results
from landscape.analyses import registry
from landscape.progress import Progress

log = logging.getLogger("landscape")

PathLike = str | os.PathLike


@dataclass
class Summary:
    """Outcome of :func:`analyze`; also written to ``<out>/summary.json``.

    Each entry of ``done`` / ``skipped`` / ``failed`` is a dict with ``checkpoint``,
    ``analysis``, ``run``, ``result`` (the ``.nc`` path), ``seconds`` and, for failures,
    ``error`` (one line: type and message) and ``traceback``.
    """

    out: Path
    done: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted

    def add(self, record: dict[str, Any]) -> None:
        {"done": self.done, "skipped": self.skipped}.get(record["status"], self.failed).append(record)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "counts": {"done": len(self.done), "skipped": len(self.skipped), "failed": len(self.failed)},
            "seconds": round(self.seconds, 3),
            "interrupted": self.interrupted,
            "done": self.done,
            "skipped": self.skipped,
            "failed": self.failed,
        }

    def __str__(self) -> str:
        s = f"{len(self.done)} done, {len(self.skipped)} skipped, {len(self.failed)} failed in {self.seconds:.1f}s"
        return s + (" (interrupted)" if self.interrupted else "")


# ----------------------------------------------------------------------------- the task


@functools.lru_cache(maxsize=4)
def _load_data(spec_json: str):
    # Cached per process: consecutive tasks on checkpoints of one run share their data set.
    from landscape.data import get_dataset

    spec = json.loads(spec_json)
    ds = get_dataset(spec["dataset"], spec["split"], root=spec["data_root"], augment=False, **spec["dataset_kwargs"])
    return ds.subset(spec["n"])


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _error_record(task: Mapping[str, Any], exc: BaseException, t0: float, tb: str | None = None,
                  cpu0: float | None = None) -> dict[str, Any]:
    rec = _record(task, "failed", t0, cpu0)
    rec["error"] = f"{type(exc).__name__}: {exc}".strip()
    rec["traceback"] = tb if tb is not None else "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return rec


def _record(task: Mapping[str, Any], status: str, t0: float, cpu0: float | None = None, **extra: Any) -> dict[str, Any]:
    rec = {
        "checkpoint": task["checkpoint"],
        "analysis": task["analysis"],
        "run": task["run"],
        "result": task["result"],
        "status": status,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if cpu0 is not None:
        # CPU time of the task's process (all its threads): far below `seconds` means the task
        # waited for a CPU (an oversubscribed machine), not that it computed slowly.
        rec["cpu_seconds"] = round(time.process_time() - cpu0, 3)
    rec.update(extra)
    return rec


def run_task(task: Mapping[str, Any]) -> dict[str, Any]:
    """Run one (checkpoint, analysis) task; never raises for errors of the task itself.

    Returns a record for the summary with ``status`` ``done``, ``skipped`` or ``failed``.
    """
    import torch

    from landscape.checkpoint import file_sha256, load_checkpoint

    t0, cpu0 = time.perf_counter(), time.process_time()
    old_threads = torch.get_num_threads()
    try:
        threads = task.get("threads") or int(os.environ.get("SLURM_CPUS_PER_TASK", "0") or 0) or None
        if threads:
            torch.set_num_threads(int(threads))
        path = Path(task["result"])
        sha = file_sha256(task["checkpoint"])
        state = results.existing_result(path, sha)
        if task.get("skip_existing", True) and state == "current":
            return _record(task, "skipped", t0, cpu0, note="result exists")
        registry.ensure_registered(task["analysis"], task.get("entry"))
        analysis = registry.get_analysis(task["analysis"])
        options = analysis.options(task["options"])
        ckpt = load_checkpoint(task["checkpoint"])
        device = _device(task.get("device", "auto"))
        model = ckpt.model.to(device)
        data, data_spec = None, None
        if analysis.needs_data:
            data_spec = registry.DataOptions.from_dict(task["data"]).resolve(ckpt.config)
            data = _load_data(json.dumps(data_spec, sort_keys=True))
        kwargs = options.to_dict()
        if analysis.extra_inputs is not None:
            kwargs.update(analysis.extra_inputs(ckpt))
        ds = analysis.fn(model, data, **kwargs)
        import xarray as xr

        if not isinstance(ds, xr.Dataset):
            raise TypeError(f"analysis {analysis.name!r} returned {type(ds).__name__}, not an xarray.Dataset")
        results.write_result(
            ds,
            path,
            analysis=analysis.name,
            run=task["run"],
            step=ckpt.step,
            checkpoint=task["checkpoint"],
            checkpoint_sha256=sha,
            options_hash=task["hash"],
            config_json=options.to_json(),
            attrs={
                "epoch": int(ckpt.epoch),
                "device": str(device),
                "data_json": json.dumps(data_spec, sort_keys=True) if data_spec else "",
                "checkpoint_config_json": json.dumps(ckpt.config, sort_keys=True, default=str),
            },
        )
        note = "replaced a result of an older version of this checkpoint file" if state == "stale" else ""
        return _record(task, "done", t0, cpu0, step=int(ckpt.step), **({"note": note} if note else {}))
    except Exception as exc:  # noqa: BLE001 - the point: one failure must not stop the batch
        return _error_record(task, exc, t0, cpu0=cpu0)
    finally:
        torch.set_num_threads(old_threads)


class RunTask:
    """Picklable callable around :func:`run_task` that submitit can requeue.

    On preemption or time-out submitit calls ``checkpoint``; requeuing the same task is enough,
    because a finished result is skipped and an unfinished one was never renamed into place.
    """

    def __call__(self, task: Mapping[str, Any]) -> dict[str, Any]:
        return run_task(task)

    def checkpoint(self, task: Mapping[str, Any]):
        import submitit

        return submitit.helpers.DelayedSubmission(self, task)


# ----------------------------------------------------------------------------- the driver


def _checkpoints_with_runs(paths_or_folder: PathLike | Iterable[PathLike]) -> list[tuple[Path, str]]:
    """(checkpoint, run name); run = folder relative to the given folder, or its own name."""
    from landscape.checkpoint import CheckpointError, find_checkpoints

    items = [paths_or_folder] if isinstance(paths_or_folder, (str, os.PathLike)) else list(paths_or_folder)
    out: list[tuple[Path, str]] = []
    for item in map(Path, items):
        if item.is_dir():
            found = find_checkpoints(item)
            for ck in found:
                rel = ck.parent.resolve().relative_to(item.resolve()).as_posix()
                out.append((ck, item.resolve().name if rel == "." else rel))
        elif item.exists():
            out.append((item, item.resolve().parent.name))
        else:
            raise CheckpointError(f"{item}: no such file or folder")
    seen: dict[tuple[str, str], Path] = {}
    unique: list[tuple[Path, str]] = []
    for ck, run in out:
        key = (run, ck.stem)
        if key in seen:
            if seen[key].resolve() == ck.resolve():
                continue
            raise ValueError(
                f"{seen[key]} and {ck} would share the results folder {run}/{ck.stem}; "
                "pass their common parent folder (run names are folders relative to it) or rename one"
            )
        seen[key] = ck
        unique.append((ck, run))
    return unique


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
) -> Summary:
    """Run analyses on every checkpoint under a folder; one result file per (checkpoint, analysis).

    Args:
        paths_or_folder: a folder (searched recursively for ``*.pt``/``*.pth``; ``last.pt`` beside
            ``epoch_*.pt`` is skipped as a duplicate), a file, or a list of them.
        analyses: registry names, a list or ``"hessian,sharpness"``.
        options: per-analysis options and data options, ``{"hessian": {"top_k": 3},
            "data": {"n": 512}}`` (dicts or Options objects), validated strictly before any
            work starts.
        out: results folder: ``<out>/<run>/<checkpoint stem>/<analysis>-<hash>.nc`` and
            ``<out>/summary.json``. The run is the checkpoint's folder relative to the folder
            given (its own name for checkpoints directly inside it).
        executor: anything with ``submit()``/``.result()`` (see module docstring); ``None``
            runs serially here, or in a local process pool when ``workers`` > 1.
        workers: size of the local process pool (ignored when ``executor`` is given).
        skip_existing: skip tasks whose result exists with the same options and checkpoint
            bytes; ``False`` recomputes and replaces them.
        threads: torch threads per task; default: all cores serially, cores/workers in a pool,
            ``$SLURM_CPUS_PER_TASK`` on Slurm, else torch's default.
        device: ``auto`` (CUDA when the worker has it), ``cpu``, ``cuda``, ``cuda:N``.
        progress: show a progress bar / log lines.

    Returns:
        A :class:`Summary` (done, skipped, failed with error text), also in ``summary.json``.

    Example:
        >>> s = analyze("checkpoints/", "hessian,sharpness", out="results", workers=2)  # doctest: +SKIP
        >>> print(s)  # doctest: +SKIP
        16 done, 0 skipped, 0 failed in 41.2s
    """
    t0 = time.perf_counter()
    names = registry.parse_analyses(analyses)
    resolved, data_opts = registry.resolve_options(names, options)
    ckpts = _checkpoints_with_runs(paths_or_folder)
    if not ckpts:
        raise ValueError(f"no checkpoints (*.pt, *.pth) found in {paths_or_folder}")
    out = Path(out)
    if threads is None and executor is None:
        threads = _default_threads(workers)

    summary = Summary(out=out)
    hashes = {n: results.options_hash(n, resolved[n], data_opts) for n in names}
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

    tasks: list[dict[str, Any]] = []
    for ck, run in ckpts:
        for n in names:
            path = results.result_path(out, run, ck, n, hashes[n])
            task = {
                "checkpoint": str(ck.resolve()),
                "run": run,
                "analysis": n,
                "entry": entries[n],
                "options": resolved[n].to_dict(),
                "data": data_opts.to_dict(),
                "hash": hashes[n],
                "result": str(path),
                "skip_existing": skip_existing,
                "threads": threads,
                "device": device,
            }
            if skip_existing and path.exists():
                sha = checkpoint_sha(ck)
                if sha is not None and results.existing_result(path, sha) == "current":
                    summary.add(_record(task, "skipped", time.perf_counter(), note="result exists"))
                    continue
            tasks.append(task)

    own_pool = None
    if executor is None and workers and workers > 1 and len(tasks) > 1:
        own_pool = executor = cf.ProcessPoolExecutor(
            max_workers=min(workers, len(tasks)), mp_context=multiprocessing.get_context("spawn")
        )
    bar = Progress(len(tasks), "analyze", enabled=progress and bool(tasks))
    try:
        if executor is None:
            for task in tasks:
                rec = run_task(task)
                summary.add(rec)
                bar.update(postfix=f"{len(summary.failed)} failed")
        else:
            _run_on(executor, tasks, summary, bar)
    except KeyboardInterrupt:
        summary.interrupted = True
        raise
    finally:
        bar.close()
        if own_pool is not None:
            own_pool.shutdown(wait=not summary.interrupted, cancel_futures=True)
        summary.seconds = time.perf_counter() - t0
        results.write_json(out / "summary.json", summary.to_dict())
    for rec in summary.failed:
        log.warning("failed: %s [%s]: %s", rec["checkpoint"], rec["analysis"], rec["error"])
    return summary


def _run_on(executor: Any, tasks: list[dict[str, Any]], summary: Summary, bar: Progress) -> None:
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
            rec = _error_record(task, exc, submitted_at, tb=_worker_death_hint(exc))
        summary.add(rec)
        bar.update(postfix=f"{len(summary.failed)} failed")


def _worker_death_hint(exc: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc))
    if isinstance(exc, cf.process.BrokenProcessPool):
        text += (
            "A worker process died (killed, out of memory, or a crash in native code); tasks that "
            "were running or queued in the pool at that time are reported failed. Results already "
            "written are complete; re-run the same command to finish the rest.\n"
        )
    return text


__all__ = ["RunTask", "Summary", "analyze", "run_task"]
