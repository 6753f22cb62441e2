"""Peak memory over a measured window (a model's size is :mod:`autoslim.compress.size`).

Peak memory during a window is, on a CUDA device, ``torch.cuda.max_memory_allocated`` (tensors
on that device, reset at the start of the window). On the CPU it is the high-water mark of the
process's resident set (Linux ``VmHWM``, reset at the start of the window through
``/proc/self/clear_refs``): everything the process holds, including Python, torch, the corpus
and a teacher model if one is loaded, so compare it only between runs of the same script.
Before the reset, freed heap pages go back to the OS (:func:`autoslim.memory.release_freed`):
otherwise a distillation's freed gradients and optimizer state would count towards the
window of the model it produced. Where
the reset is impossible it is ``ru_maxrss``, the high-water since the process started.

The counters and their resets live in :mod:`autoslim.memory`, which also keeps the peak of a
whole trial across the windows' resets.
"""

from __future__ import annotations

import gc
import resource
import sys
from typing import TYPE_CHECKING, Any

from autoslim.memory import release_freed, reset, vm_hwm_bytes

if TYPE_CHECKING:
    import torch


class PeakMemory:
    """Peak memory over a window: ``start()``, the work, then ``peak_bytes()``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = ""

    def start(self) -> None:
        if self.device.type != "cuda":
            gc.collect()
            release_freed()
        if reset(str(self.device)):
            self.method = (
                "cuda max_memory_allocated over the workload"
                if self.device.type == "cuda"
                else "process resident-set high-water (VmHWM) over the workload"
            )
        else:
            self.method = "process ru_maxrss since start (could not reset)"

    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            import torch

            return int(torch.cuda.max_memory_allocated(self.device))
        if self.method.startswith("process resident-set"):
            hwm = vm_hwm_bytes()
            if hwm is not None:
                return hwm
        usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(usage if sys.platform == "darwin" else usage * 1024)

    def describe(self) -> dict[str, Any]:
        return {"device": str(self.device), "method": self.method}
