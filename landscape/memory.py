"""Peak memory of one analysis, stored in its result's attributes (the one home of the measure).

* On CUDA: ``torch.cuda.max_memory_allocated`` of the analysis' device, whose peak counter is
  reset when the analysis starts (``torch.cuda.reset_peak_memory_stats``; torch has no way to
  restore an earlier peak, so a caller's own reading taken before the analysis is lost; read it
  first). ``peak_memory_bytes`` is the device-wide peak of tensors allocated by torch during the
  analysis (the model, its copies, the staged data, the graphs); ``peak_memory_baseline_bytes``
  what was allocated when it started, so the analysis' own share is the difference.
* On the CPU: the growth of the process' peak resident set size (``ru_maxrss``) over the
  analysis. It is an honest lower bound, not an allocator count: 0 when the analysis stayed
  below a peak the process reached earlier, and it includes whatever else the process
  allocated meanwhile. ``peak_memory_measure`` names the measure used.

These attributes depend on the machine and on what ran before, not on the inputs: results that
must compare equal are compared with :func:`landscape.analyses.common.comparable`, which drops
them.

Example:
    >>> import torch
    >>> meter = PeakMemory(torch.device("cpu"))
    >>> x = torch.ones(1000)
    >>> a = meter.attrs()
    >>> a["peak_memory_device"], a["peak_memory_bytes"] >= 0
    ('cpu', True)
"""

from __future__ import annotations

import sys

import torch

__all__ = ["MEMORY_ATTRS", "PeakMemory"]

MEMORY_ATTRS = ("peak_memory_bytes", "peak_memory_baseline_bytes")

try:
    import resource
except ImportError:  # Windows
    resource = None


def _max_rss() -> int | None:
    if resource is None:
        return None
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(kb) if sys.platform == "darwin" else int(kb) * 1024  # macOS reports bytes, Linux KiB


class PeakMemory:
    """Started at construction (an analysis' start); :meth:`attrs` reads the peak so far."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda":
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
            self._base = int(torch.cuda.memory_allocated(self.device))
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._base = _max_rss()

    def attrs(self) -> dict[str, int | str]:
        """``peak_memory_bytes``, ``peak_memory_baseline_bytes``, ``peak_memory_device`` and
        ``peak_memory_measure`` (what the number is)."""
        if self.device.type == "cuda":
            peak = int(torch.cuda.max_memory_allocated(self.device))
            base = self._base
            measure = "torch.cuda.max_memory_allocated during the analysis (peak counter reset at its start)"
        elif self._base is not None:
            peak, base = max(0, _max_rss() - self._base), 0
            measure = "growth of the process peak resident set (ru_maxrss) during the analysis; a lower bound"
        else:
            peak, base, measure = 0, 0, "not measured (no getrusage on this platform)"
        return {"peak_memory_bytes": peak, "peak_memory_baseline_bytes": base,
                "peak_memory_device": str(self.device), "peak_memory_measure": measure}
