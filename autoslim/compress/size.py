"""How big a built torch model is: weight bytes as stored and logical parameter count.

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
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

from autoslim.compress.backends import backend_of

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
