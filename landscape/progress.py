"""Progress reporting: a tqdm bar on a terminal or in a notebook, sparse log lines otherwise.

The one mechanism behind every ``progress=`` keyword (``train``, ``analyze``,
``hessian_spectrum``, ``sharpness``): enabled by default; where there is no terminal or notebook
(Slurm logs, CI) it writes a line to the ``landscape`` logger every ~5 % or 60 s, which shows
once logging is configured (e.g. ``logging.basicConfig(level=logging.INFO)``).
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("landscape")


def interactive() -> bool:
    """A terminal (stderr is a TTY) or a Jupyter/IPython kernel, where tqdm can draw a bar."""
    try:
        if sys.stderr.isatty():
            return True
    except (AttributeError, ValueError):  # a closed or replaced stderr
        return False
    shell = sys.modules.get("IPython")
    if shell is None or "ipykernel" not in sys.modules:
        return False
    ip = getattr(shell, "get_ipython", lambda: None)()
    return ip is not None and getattr(ip, "kernel", None) is not None


class Progress:
    """Counts work units; shows tqdm on a terminal or in a notebook, else logs every ~5 % or 60 s.

    Example:
        >>> with Progress(10, "demo", enabled=False) as p:
        ...     for _ in range(10):
        ...         p.update()
    """

    def __init__(self, total: int, desc: str, *, enabled: bool = True, every_s: float = 60.0):
        self.total, self.desc, self.enabled, self.every_s = max(int(total), 1), desc, enabled, every_s
        self.done = 0
        self.postfix = ""
        self._bar = None
        self._t0 = self._last_t = time.monotonic()
        self._last_frac = 0.0
        if enabled and interactive():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=desc, leave=False, dynamic_ncols=True)

    def update(self, n: int = 1, postfix: str = "") -> None:
        self.done += n
        if postfix:
            self.postfix = postfix
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix_str(postfix, refresh=False)
            return
        now = time.monotonic()
        frac = self.done / self.total
        if frac - self._last_frac >= 0.05 or now - self._last_t >= self.every_s or self.done == self.total:
            self._last_frac, self._last_t = frac, now
            log.info("%s: %d/%d (%.0f%%) %.0fs %s", self.desc, self.done, self.total, 100 * frac, now - self._t0, self.postfix)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
