"""Local worker processes in which one dying worker fails only its own task.

``concurrent.futures.ProcessPoolExecutor`` marks *every* pending task failed
(``BrokenProcessPool``) when one worker dies, and leaves its workers blocked when the driver is
killed. :func:`run_isolated` gives each spawned worker one task at a time over a pipe, so the
driver always knows which task a dead worker was running. That task is retried once in a fresh
worker (the dead worker is replaced; the others go on); a task that kills its worker on the
retry too is reported alone, with the cause read from the exit status (killed by ``SIGKILL``,
which is how the out-of-memory killer ends a process; segmentation fault; other signal or exit
code). Workers watch their parent: when the driver dies, even by ``SIGKILL``, they exit within
about half a second instead of staying behind.

Example:
    >>> from landscape.pool import run_isolated
    >>> sorted(run_isolated(abs, [-1, -2, 3], workers=2))  # doctest: +SKIP
    [(-2, 2, 1), (-1, 1, 1), (3, 3, 1)]
"""

from __future__ import annotations

import collections
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["WorkerDeath", "death_cause", "run_isolated"]

PARENT_POLL_S = 0.5


@dataclass(frozen=True)
class WorkerDeath:
    """A task whose worker process died on every attempt.

    ``cause``: ``"killed"`` (SIGKILL: the out-of-memory killer or a user), ``"segfault"``,
    ``"memory"`` (the task raised MemoryError in each attempt), ``"crash"`` (another signal or
    exit code). ``detail``: one line for the summary. ``attempts``: how many workers it took.
    """

    cause: str
    detail: str
    exitcode: int | None
    attempts: int


def death_cause(exitcode: int | None) -> tuple[str, str]:
    """``(cause, detail)`` for a worker's exit status (negative: killed by that signal).

    Example:
        >>> death_cause(-9)[0], death_cause(-11)[0], death_cause(3)[0]
        ('killed', 'segfault', 'crash')
    """
    if exitcode is not None and exitcode < 0:
        sig = -exitcode
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        if sig == signal.SIGKILL:
            return "killed", f"worker killed by {name} (the out-of-memory killer, or killed by a user)"
        if sig == signal.SIGSEGV:
            return "segfault", f"worker crashed with a segmentation fault ({name}, a crash in native code)"
        return "crash", f"worker ended by {name}"
    return "crash", f"worker exited with status {exitcode}"


def _watch_parent(parent_pid: int) -> None:
    # Reparented (the driver died, also by SIGKILL): leave at once, whatever the task is doing.
    while True:
        if os.getppid() != parent_pid:
            os._exit(70)
        time.sleep(PARENT_POLL_S)


def _worker_main(conn, parent_pid: int, fn: Callable[[Any], Any]) -> None:
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    while True:
        try:
            item = conn.recv()
        except (EOFError, OSError):
            return
        if item is None:
            return
        conn.send(fn(item))


class _Worker:
    def __init__(self, ctx, fn):
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child, os.getpid(), fn), daemon=True,
                                name="landscape-worker")
        self.proc.start()
        child.close()
        self.job: tuple[Any, int] | None = None  # (item, attempt)

    def give(self, item: Any, attempt: int) -> None:
        self.job = (item, attempt)
        self.conn.send(item)

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        else:
            try:
                self.conn.send(None)
            except (OSError, ValueError):
                pass
        self.proc.join(timeout=None if kill else 5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


def run_isolated(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    workers: int,
    *,
    retries: int = 1,
    retry_if: Callable[[Any], bool] | None = None,
    context: str = "spawn",
) -> Iterator[tuple[Any, Any, int]]:
    """Run ``fn(item)`` for every item in ``workers`` spawned processes; yield
    ``(item, result, attempts)`` as they finish, ``result`` a :class:`WorkerDeath` for a task
    that killed its worker on all ``1 + retries`` attempts.

    Args:
        fn: a picklable callable (module-level function or instance of a module-level class).
        items: picklable inputs.
        workers: number of processes.
        retries: extra attempts, each in a fresh worker, for a task whose worker died.
        retry_if: ``result -> bool``; a result for which it is true (e.g. a caught MemoryError)
            also retires its worker and is retried in a fresh one; after the last attempt that
            result is yielded.
        context: multiprocessing start method (``spawn``: safe with CUDA and threads).
    """
    ctx = multiprocessing.get_context(context)
    pending = collections.deque((item, 1) for item in items)
    pool: list[_Worker] = []

    def fresh() -> _Worker:
        w = _Worker(ctx, fn)
        pool.append(w)
        return w

    def retire(w: _Worker, kill: bool) -> None:
        pool.remove(w)
        w.stop(kill=kill)

    def feed() -> None:
        # Hand queued tasks to idle workers; an idle worker that died meanwhile is replaced.
        for w in list(pool):
            if not pending:
                return
            if w.job is None:
                if not w.proc.is_alive():
                    retire(w, kill=True)
                    w = fresh()
                w.give(*pending.popleft())

    try:
        for _ in range(min(workers, len(pending))):
            fresh()
        feed()
        while any(w.job is not None for w in pool):
            busy = [w for w in pool if w.job is not None]
            ready = set(multiprocessing.connection.wait([w.conn for w in busy] + [w.proc.sentinel for w in busy]))
            for w in busy:
                if w.conn not in ready and w.proc.sentinel not in ready:
                    continue
                item, attempt = w.job
                try:
                    if not w.conn.poll():
                        raise EOFError
                    result, died = w.conn.recv(), False
                except (EOFError, OSError):
                    result, died = None, True
                w.job = None
                if died:
                    w.proc.join()
                    outcome: Any = WorkerDeath(*death_cause(w.proc.exitcode), w.proc.exitcode, attempt)
                    retire(w, kill=True)
                elif retry_if is not None and retry_if(result):
                    outcome = result
                    retire(w, kill=True)  # its memory may be in a bad state: never reuse it
                    died = True
                else:
                    outcome = result
                if died and attempt <= retries:
                    fresh().give(item, attempt + 1)  # a retry always runs in a fresh worker
                    continue
                if died and pending:
                    fresh()
                yield item, outcome, attempt
                feed()
            feed()
    finally:
        running = any(w.job is not None for w in pool)
        for w in list(pool):
            w.stop(kill=running)
