"""Per-result locks, so that two runs on one results folder never compute or write one result twice.

A lock is a hidden file ``.<name>.lock`` beside the file it protects, held with ``fcntl.flock``
for as long as the owner works on it. The kernel releases a ``flock`` when its owner dies (also
by ``SIGKILL``), so a lock is never stale after the owner's death and nothing has to guess
from process ids whether a lock is abandoned. The lock file records host, pid and start time of
its holder, so a run that finds a result locked can say who computes it.

On release the holder removes the file while still holding the lock; an acquirer checks after
locking that the file it locked is still the one at the path (same inode), so an unlink racing
with a new acquirer never gives two holders.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> target = Path(tempfile.mkdtemp()) / "hessian-0123456789.nc"
    >>> with ResultLock(target) as lock:
    ...     lock.acquired, ResultLock(target).acquire()
    (True, False)
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: locking is not available
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_SUFFIX", "ResultLock", "lock_path"]

LOCK_SUFFIX = ".lock"


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of ``path``: ``.<name>.lock`` in the same folder (hidden: readers skip it)."""
    path = Path(path)
    return path.with_name(f".{path.name}{LOCK_SUFFIX}")


class ResultLock:
    """An exclusive, non-blocking (or waiting) lock on one result path.

    Args:
        path: the file the lock protects (the lock file lies beside it).

    ``acquire()`` returns ``False`` when another process holds the lock; :attr:`holder` then
    describes it (``{"host", "pid", "since"}``, as far as it could be read).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.file = lock_path(self.path)
        self._fd: int | None = None
        self.holder: dict[str, Any] = {}

    @property
    def acquired(self) -> bool:
        return self._fd is not None

    def acquire(self, wait: float = 0.0, poll: float = 0.2) -> bool:
        """Try to take the lock; retry for up to ``wait`` seconds. True when taken."""
        if fcntl is None:  # pragma: no cover
            return True
        if self._fd is not None:
            return True
        deadline = time.monotonic() + wait
        while True:
            if self._try():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll)

    def _try(self) -> bool:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            self.holder = self._read_holder()
            return False
        try:
            same = os.fstat(fd).st_ino == os.stat(self.file).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the holder released (and removed) it between our open and our lock
            os.close(fd)
            return self._try()
        info = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(info).encode())
        except OSError:  # a full disk must not stop the lock from working: the flock is the lock
            pass
        self._fd, self.holder = fd, info
        return True

    def _read_holder(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.file.read_text() or "{}"))
        except (OSError, ValueError, TypeError):
            return {}

    def describe_holder(self) -> str:
        h = self.holder
        if not h:
            return "another process"
        since = time.strftime("%H:%M:%S", time.localtime(h["since"])) if "since" in h else "?"
        return f"process {h.get('pid', '?')} on {h.get('host', '?')} (since {since})"

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.file)
        except FileNotFoundError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ResultLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
