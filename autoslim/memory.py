"""Peak memory counters without torch: the trial worker reads a trial's peak with them.

On the CPU the counter is the process's resident-set high-water mark (Linux ``VmHWM``, reset
by writing ``5`` to ``/proc/self/clear_refs``); on CUDA ``torch.cuda.max_memory_allocated``
(torch imported only then). The peak of a whole trial (build, distillation and measurement) is
:func:`mark_trial` then :func:`trial_peak_bytes`: a reset that a measurement window makes in
between (:class:`autoslim.measure.footprint.PeakMemory`) carries what the counter held, so it
does not hide the distillation's peak before it.

After each trial the worker calls :func:`release_freed`: glibc keeps the pages of freed tensors
in its heaps (a distillation's gradients and optimizer state are many small and mid-size
blocks), so without a trim the worker's resident memory after a trial tracks the highest trial
so far rather than what it still holds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
from pathlib import Path

PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")
PROC_STATM = Path("/proc/self/statm")


def rss_bytes(pid: int | None = None) -> int:
    """The resident memory now of this process, or of process ``pid`` (0 where ``/proc`` is
    not there or the process is gone)."""
    statm = PROC_STATM if pid is None else Path(f"/proc/{pid}/statm")
    try:
        return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def vm_hwm_bytes() -> int | None:
    try:
        found = re.search(r"VmHWM:\s+(\d+) kB", PROC_STATUS.read_text())
    except OSError:
        return None
    return int(found.group(1)) * 1024 if found else None


# The highest peak seen before a window's reset since the last mark_trial(), per device.
_carried: dict[str, int] = {}


def _current_peak(device: str) -> int | None:
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.max_memory_allocated(device))
    return vm_hwm_bytes()


def reset(device: str, carry: bool = True) -> bool:
    """Reset the device's high-water mark (keeping what it held for the trial's peak when
    ``carry``); False where the reset is impossible."""
    peak = _current_peak(device) if carry else None
    if peak is not None:
        _carried[device] = max(_carried.get(device, 0), peak)
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        PROC_CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def mark_trial(device: str) -> None:
    """Start a trial's peak on ``device`` ("cpu", "cuda:0"): reset the high-water mark and
    forget earlier windows."""
    _carried.pop(device, None)
    reset(device, carry=False)


def trial_peak_bytes(device: str) -> int | None:
    """The highest memory on ``device`` since :func:`mark_trial` (None where unreadable)."""
    current = _current_peak(device)
    carried = _carried.get(device)
    if current is None:
        return carried
    return max(current, carried or 0)


def _c_library() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def release_freed() -> bool:
    """Return the C allocator's free pages to the OS (glibc ``malloc_trim(0)``); False where the
    C library has no such call (musl, macOS)."""
    trim = getattr(_c_library(), "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True
