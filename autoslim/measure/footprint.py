"""How big a model is: weight bytes as stored, logical parameter count, and peak memory.

``size_bytes`` is the sum of the bytes of every tensor in ``model.state_dict()``, with tensors
that share memory (tied embeddings) counted once. For bitsandbytes models that is the packed
storage (4-bit weights as uint8 pairs plus their absmax / quant-map tensors); a torchao weight
is a tensor subclass whose own ``nbytes`` is that of its logical shape in the compute dtype, so
it counts as the tensors it stores (``__tensor_flatten__``: int8 data, scales, zero points).
Either way it is what ``save_pretrained`` writes, without the file format's headers (the
contract tests check it equals the safetensors payload).

``parameters`` counts logical weights: a bitsandbytes 4-bit parameter counts as the shape it
was quantized from, not its packed bytes; a torchao parameter's ``numel`` is already its
logical shape.

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
import math
import resource
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from autoslim.memory import release_freed, reset, vm_hwm_bytes

if TYPE_CHECKING:
    import torch


def _stored(tensor: torch.Tensor) -> Iterator[torch.Tensor]:
    """The plain tensors that hold ``tensor``'s data: itself, or a wrapper subclass's inner
    tensors (torchao's quantized weights), recursively."""
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is None:
        yield tensor
        return
    names, _ = flatten()
    for name in names:
        yield from _stored(getattr(tensor, name))


def size_bytes(model: torch.nn.Module) -> int:
    """Bytes of the weights as stored: ``state_dict`` tensors, shared memory once, read after
    the model's quantization backend (if any) restored the state it saves."""
    import torch

    from autoslim.compress.backends import backend_of

    backend = backend_of(model)
    if backend is not None:
        backend.restore(model)
    seen: set[tuple[int, int]] = set()
    total = 0
    for value in model.state_dict().values():
        if not isinstance(value, torch.Tensor):
            continue
        for tensor in _stored(value):
            key = (tensor.data_ptr(), tensor.nbytes)
            if key in seen and tensor.nbytes:
                continue
            seen.add(key)
            total += tensor.nbytes
    return total


def parameter_count(model: torch.nn.Module) -> int:
    """Logical parameters; a quantized parameter counts as its original shape."""
    total = 0
    seen: set[int] = set()
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        quant_state = getattr(param, "quant_state", None)
        shape = getattr(quant_state, "shape", None)
        total += math.prod(shape) if shape is not None else param.numel()
    return total


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
