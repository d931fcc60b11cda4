"""Memory a runtime and its model add to a process, as a device would see it (Linux ``/proc``).

A benchmark child (one per run, holding only what its runtime needs) calls :meth:`MemoryProbe.
baseline` once its inputs are prepared and its runtime library is imported, right before the
programs load; :meth:`MemoryProbe.finish` after loading + streaming. Figures:

- ``baseline_rss_bytes``: ``VmRSS`` at the baseline;
- ``model_peak_bytes``: ``VmHWM - baseline`` where ``VmHWM`` (the resident high-water mark) was
  reset at the baseline by writing ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0): the peak
  the programs, the runtime's buffers and the streaming states add -- the figure a budget for a
  device needs;
- ``model_rss_bytes``: ``VmRSS`` after streaming minus the baseline (what stays resident);
- ``peak_rss_bytes``: the absolute ``VmHWM`` of the whole minimal process (interpreter, runtime
  library, inputs, model), the larger of the marks before and after the reset.

Where the high-water mark cannot be reset (no ``/proc``, another OS) ``model_peak_bytes`` falls
back to ``getrusage`` ``ru_maxrss - baseline`` (an upper bound: the peak before the baseline
counts too) and ``memory_method`` says so. This module imports nothing but the standard
library.
"""

from __future__ import annotations

import resource
import sys
from typing import Any

#: How the figures were measured (copied into each run of the report).
METHOD_HWM_RESET = (
    "linux /proc: baseline = VmRSS after the inputs are prepared and the runtime library is "
    "imported, before the programs load; VmHWM reset there (write 5 to /proc/self/clear_refs); "
    "model_peak_bytes = VmHWM after loading + streaming - baseline; model_rss_bytes = VmRSS at the "
    "end - baseline; peak_rss_bytes = the child's absolute VmHWM"
)
METHOD_MAXRSS = (
    "getrusage ru_maxrss (VmHWM could not be reset): model_peak_bytes = ru_maxrss - baseline, an "
    "upper bound that includes any peak before the baseline"
)


def _status_kib(field: str) -> int | None:
    """``field`` (``VmRSS``, ``VmHWM``) of ``/proc/self/status`` in bytes; None without /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_bytes() -> int | None:
    """Resident set size now."""
    return _status_kib("VmRSS")


def hwm_bytes() -> int:
    """Resident high-water mark (``VmHWM``; else ``ru_maxrss``)."""
    v = _status_kib("VmHWM")
    if v is not None:
        return v
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def reset_peak() -> bool:
    """Reset ``VmHWM`` to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    hwm, rss = _status_kib("VmHWM"), _status_kib("VmRSS")
    # the reset worked when the mark dropped to (about) the current resident set
    return hwm is not None and rss is not None and hwm <= rss + 4 * 2**20


class MemoryProbe:
    """Baseline, high-water-mark reset and the final figures of one run (see the module doc)."""

    def __init__(self) -> None:
        self.baseline: int | None = None
        self.peak_before = 0
        self.reset = False

    def baseline_now(self) -> None:
        """Take the baseline and reset the high-water mark: call right before the programs
        load."""
        self.peak_before = hwm_bytes()
        self.baseline = rss_bytes()
        self.reset = reset_peak()
        if self.reset:  # reading the files may have moved it a little
            self.baseline = rss_bytes() or self.baseline

    def finish(self) -> dict[str, Any]:
        """The run's memory figures (bytes) and ``memory_method``."""
        hwm, rss = hwm_bytes(), rss_bytes()
        base = self.baseline or 0
        return {
            "baseline_rss_bytes": self.baseline,
            "model_peak_bytes": max(0, hwm - base),
            "model_rss_bytes": max(0, (rss or 0) - base),
            "peak_rss_bytes": max(hwm, self.peak_before),
            "torch_imported": "torch" in sys.modules,
            "memory_method": METHOD_HWM_RESET if self.reset else METHOD_MAXRSS,
        }
