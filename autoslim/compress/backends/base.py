"""One protocol for quantization backends: check → quantize → save (→ plain reload).

A backend quantizes the way an export is reloaded: the model is written to a temporary folder
and loaded back by ``from_pretrained`` with the backend's transformers ``quantization_config``,
so the in-memory model and a reload of its saved folder go through the same code, and the saved
folder's ``config.json`` carries that config: plain ``AutoModelForCausalLM.from_pretrained``
reloads it without being told how it was quantized.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from autoslim.errors import UnsupportedError
from autoslim.scratch import scratch_folder

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuantSpec:
    """What to quantize to, independent of the backend that does it."""

    bits: int  # 8 or 4
    quant_type: str = "nf4"  # bitsandbytes 4-bit: "nf4" | "fp4" (ignored otherwise)
    double_quant: bool = True  # bitsandbytes 4-bit only
    activations: bool = False  # torchao 8-bit only: int8 dynamic activation quantization


def save_pretrained(model: Any, tokenizer: Any, folder: str | Path) -> None:
    """``save_pretrained`` of model (safetensors) and tokenizer into ``folder``."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


class QuantBackend(abc.ABC):
    """A quantization library: what it needs, where it runs, and its four steps."""

    name: str
    install_hint: str

    @abc.abstractmethod
    def available(self) -> str | None:
        """None when the library imports, else why not and how to install it."""

    @abc.abstractmethod
    def devices(self) -> tuple[str, ...]:
        """Device types (``"cpu"``, ``"cuda"``) this backend's kernels run on."""

    @abc.abstractmethod
    def supports(self, spec: QuantSpec) -> str | None:
        """None, or why this backend has no such scheme."""

    def supports_family(self, family: str) -> str | None:
        """None, or why this backend cannot quantize models of ``family``."""
        return None

    @abc.abstractmethod
    def quantization_config(self, spec: QuantSpec, device: str, dtype: torch.dtype) -> Any:
        """The transformers ``quantization_config`` that loads a model quantized to ``spec``."""

    def check_shapes(
        self, spec: QuantSpec, device: str, shapes: dict[str, tuple[int, int]], dtype: torch.dtype
    ) -> None:
        """Raise UnsupportedError for a layer shape or dtype the kernels cannot run."""
        return None

    def check(
        self, spec: QuantSpec, device: str, shapes: dict[str, tuple[int, int]], dtype: torch.dtype
    ) -> None:
        """Refuse, before any work, what this machine cannot run: the library missing, the
        device, the scheme, or a layer's ``(in_features, out_features)`` in ``shapes``."""
        missing = self.available()
        if missing is not None:
            raise UnsupportedError(f"quant_backend={self.name!r}: {missing}")
        kind = torch.device(device).type
        if kind not in self.devices():
            raise UnsupportedError(
                f"quant_backend={self.name!r} on device {device!r}: {self.name} runs on "
                f"{', '.join(map(repr, self.devices()))} here; use one of those or bits=16"
            )
        if kind == "cuda" and not torch.cuda.is_available():
            raise UnsupportedError(f"device={device!r}: CUDA is not available; use device='cpu'")
        why = self.supports(spec)
        if why is not None:
            raise UnsupportedError(f"quant_backend={self.name!r}: {why}")
        self.check_shapes(spec, device, shapes, dtype)

    def quantize(self, model: Any, spec: QuantSpec, device: str, dtype: torch.dtype) -> Any:
        """A quantized copy of ``model`` on ``device`` whose unquantized layers compute in
        ``dtype``; ``model`` is left as is."""
        from transformers import AutoModelForCausalLM

        with scratch_folder(SCRATCH_PREFIX) as folder:
            model.save_pretrained(folder)
            quantized: Any = AutoModelForCausalLM.from_pretrained(
                folder,
                quantization_config=self.quantization_config(spec, device, dtype),
                device_map={"": device},
                dtype=dtype,
            )
        quantized.eval()
        logger.info("quantized with %s to %s in %s", self.name, spec, dtype)
        return quantized

    def restore(self, model: Any) -> None:
        """Put ``model`` in the state that ``save`` writes, before its ``state_dict`` is read
        (nothing to do unless the library changes weights in place on a forward pass)."""
        return None

    def save(self, model: Any, tokenizer: Any, folder: str | Path) -> None:
        """Write a folder that plain ``from_pretrained`` reloads to the same outputs."""
        self.restore(model)
        save_pretrained(model, tokenizer, folder)


# The scratch folders ``quantize`` saves the model to (:mod:`autoslim.scratch`: one a killed
# process left is removed by the next quantization on the machine).
SCRATCH_PREFIX = "autoslim-quantize-"
