"""The one atomic file write of landscape: a unique temporary file in the target folder, then
``os.replace``.

Every writer (checkpoints, result files, JSON, figures, the data cache) goes through
:func:`atomic_write`, so a killed process, a full disk or a failing serializer never leaves a
partial file under the final name and never touches an existing good file. Temporary names are
unique per call (process id and a random token), so two processes writing the same target never
remove or overwrite each other's temporary files; the last ``os.replace`` wins, whole.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> p = atomic_write(Path(tempfile.mkdtemp()) / "a.txt", lambda tmp: tmp.write_text("hi"))
    >>> p.read_text()
    'hi'
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "TMP_SUFFIX",
    "atomic_write",
    "atomic_write_text",
    "is_temporary",
    "remove_stale_temporaries",
    "temporary_name",
]

TMP_SUFFIX = ".tmp"


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def temporary_name(path: str | os.PathLike) -> Path:
    """A fresh hidden temporary name beside ``path``: ``.<name>.<host>.<pid>-<token>.tmp``.

    Host and process id tell :func:`remove_stale_temporaries` whose file it is, also on a file
    system shared by the nodes of a cluster.
    """
    path = Path(path)
    return path.with_name(f".{path.name}.{_host()}.{os.getpid()}-{secrets.token_hex(4)}{TMP_SUFFIX}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove temporary files of ``path`` left by *dead* processes of this host.

    Temporary files of live processes, and of other hosts (whose processes cannot be checked
    from here), are never touched, so a concurrent writer is never disturbed.

    Returns:
        The files removed.
    """
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.{re.escape(_host())}\.(\d+)-[0-9a-f]+{re.escape(TMP_SUFFIX)}$")
    removed = []
    if not path.parent.is_dir():
        return removed
    for cand in path.parent.iterdir():
        m = pattern.match(cand.name)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            try:
                cand.unlink()
                removed.append(cand)
            except FileNotFoundError:
                pass
    return removed


def is_temporary(path: str | os.PathLike) -> bool:
    """True for names made by :func:`temporary_name` (readers skip them)."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object], *, fsync: bool = True) -> Path:
    """Call ``write(tmp)`` to fill a temporary file beside ``path``, then rename it to ``path``.

    Args:
        path: the final file; its folder is created.
        write: writes the whole content to the temporary path it is given.
        fsync: flush the temporary file to disk before the rename, so a crash of the machine
            cannot leave an empty file under the final name.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        Whatever ``write`` or the file system raises (``OSError`` with ``errno.ENOSPC`` for a
        full disk); the temporary file is removed first and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = temporary_name(path)
    try:
        write(tmp)
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    finally:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
