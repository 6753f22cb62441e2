"""Quantization backends behind one protocol (``QuantBackend``): bitsandbytes and torchao.

``BACKENDS`` names every backend; ``get_backend`` looks one up; ``save`` writes any model, plain
or quantized, through the backend that quantized it (read from ``config.quantization_config``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autoslim.compress.backends.base import QuantBackend, QuantSpec, save_pretrained
from autoslim.compress.backends.bitsandbytes import BitsandbytesBackend
from autoslim.compress.backends.torchao import TorchaoBackend
from autoslim.errors import ConfigError

__all__ = ["BACKENDS", "QuantBackend", "QuantSpec", "backend_of", "get_backend", "save"]

BACKENDS: dict[str, QuantBackend] = {
    backend.name: backend for backend in (BitsandbytesBackend(), TorchaoBackend())
}


def get_backend(name: str) -> QuantBackend:
    """The backend called ``name``; ConfigError listing the known ones otherwise."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise ConfigError(
            f"quant_backend={name!r}: choose one of {', '.join(sorted(BACKENDS))}"
        ) from None


def backend_of(model: Any) -> QuantBackend | None:
    """The backend whose quantization ``model`` carries (transformers' ``quant_method``)."""
    config = getattr(getattr(model, "config", None), "quantization_config", None)
    method = config.get("quant_method") if isinstance(config, dict) else None
    method = method or getattr(config, "quant_method", None)
    if method is None:
        return None
    return BACKENDS.get(str(getattr(method, "value", method)))


def save(model: Any, tokenizer: Any, folder: str | Path) -> None:
    """Save ``model`` and ``tokenizer`` so plain ``from_pretrained(folder)`` reloads them to the
    same outputs: through its quantization backend, or as a plain model."""
    backend = backend_of(model)
    if backend is None:
        save_pretrained(model, tokenizer, folder)
    else:
        backend.save(model, tokenizer, folder)
