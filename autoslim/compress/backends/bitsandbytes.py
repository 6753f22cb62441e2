"""bitsandbytes: int8 (LLM.int8) and 4-bit NF4 / FP4 with optional double quantization.

Why a saved 4-bit model reloaded at a different perplexity: bitsandbytes' CPU backend repacks a
4-bit weight on its first inference forward, turning its absmax scales into a transposed
bfloat16 matrix. Saving runs the inverse, which (0.50.2) leaves that transposed matrix in place
without double quantization, so a reload reads the scales in the wrong order, and with double
quantization re-quantizes the rounded scales (lossy). It also mutates the in-memory model (any
``state_dict()`` call does, measuring its size included). So ``quantize`` keeps each 4-bit
layer's state from before any forward (``PRISTINE_ATTR``) and ``restore`` puts it back before
``save`` writes or ``size_bytes`` reads it: the reload then repacks exactly as the in-memory
model did, and the size is that of the saved file.

The int8 matmul logs ``MatMul8bitLt: inputs will be cast … to float16`` on every call whose
input is not float16 (1,120 copies for two short generations). In this process the message is
dropped by a filter on that logger, and said once by autoslim at quantization; a user loading
an exported int8 model in their own process still sees it unless they compute in float16.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
from typing import Any

import torch

from autoslim.compress.backends.base import QuantBackend, QuantSpec
from autoslim.errors import UnsupportedError

logger = logging.getLogger(__name__)

PRISTINE_ATTR = "_autoslim_quantized_state"
# bitsandbytes' CPU 4-bit kernels need these multiples of (in_features, out_features).
CPU_4BIT_MULTIPLES = (64, 32)
QUANT_TYPES = ("nf4", "fp4")
CAST_MESSAGE = "MatMul8bitLt: inputs will be cast"
CAST_LOGGER = "bitsandbytes.autograd._functions"


class _DropCastMessage(logging.Filter):
    """Drops bitsandbytes' per-matmul int8 cast message (said once at quantization instead)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(CAST_MESSAGE)


def _silence_cast_message() -> None:
    target = logging.getLogger(CAST_LOGGER)
    if not any(isinstance(f, _DropCastMessage) for f in target.filters):
        target.addFilter(_DropCastMessage())


class BitsandbytesBackend(QuantBackend):
    name = "bitsandbytes"
    install_hint = "pip install bitsandbytes"

    def available(self) -> str | None:
        if importlib.util.find_spec("bitsandbytes") is None:
            return f"bitsandbytes is not installed: {self.install_hint} (or use bits=16)"
        return None

    def devices(self) -> tuple[str, ...]:
        return ("cpu", "cuda")

    def supports(self, spec: QuantSpec) -> str | None:
        if spec.bits not in (4, 8):
            return f"bits={spec.bits}: bitsandbytes quantizes to 8 or 4 bits"
        if spec.activations:
            return (
                "activations=True: bitsandbytes has no int8 dynamic activation scheme; use "
                "quant_backend='torchao' with bits=8"
            )
        if spec.bits == 4 and spec.quant_type not in QUANT_TYPES:
            return f"quant_type={spec.quant_type!r}: choose one of {QUANT_TYPES}"
        return None

    def check_shapes(
        self, spec: QuantSpec, device: str, shapes: dict[str, tuple[int, int]], dtype: torch.dtype
    ) -> None:
        """4-bit on CPU needs in_features % 64 == 0 and out_features % 32 == 0 on every layer."""
        if spec.bits != 4 or torch.device(device).type != "cpu":
            return
        need_in, need_out = CPU_4BIT_MULTIPLES
        for name, (n_in, n_out) in shapes.items():
            if n_in % need_in or n_out % need_out:
                raise UnsupportedError(
                    f"bits=4 on CPU: {name} would have {n_in} inputs and {n_out} outputs, but "
                    f"bitsandbytes' CPU kernels need multiples of {need_in} and {need_out}; drop "
                    "heads so the kept width is a multiple of 64, or use bits=8/16 or a GPU"
                )

    def quantization_config(self, spec: QuantSpec, device: str, dtype: torch.dtype) -> Any:
        from transformers import BitsAndBytesConfig

        if spec.bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=spec.quant_type,
            bnb_4bit_use_double_quant=spec.double_quant,
            bnb_4bit_compute_dtype=dtype,
        )

    def quantize(self, model: Any, spec: QuantSpec, device: str, dtype: torch.dtype) -> Any:
        import bitsandbytes as bnb

        quantized = super().quantize(model, spec, device, dtype)
        if spec.bits == 8 and dtype != torch.float16:
            _silence_cast_message()
            logger.info(
                "bitsandbytes int8 casts %s inputs to float16 on every matmul (its per-call "
                "message is suppressed)",
                dtype,
            )
        # Captured before any forward pass: bitsandbytes' CPU repacking has not happened yet.
        pristine: dict[str, tuple[torch.Tensor, Any]] = {}
        for name, module in quantized.named_modules():
            if isinstance(module, bnb.nn.modules.Linear4bit):
                weight: Any = module.weight
                pristine[name] = (weight.data.clone(), copy.deepcopy(weight.quant_state))
        setattr(quantized, PRISTINE_ATTR, pristine)
        return quantized

    def restore(self, model: Any) -> None:
        """4-bit layers go back to the state captured at quantization (their next forward
        repacks them exactly as before); reading a repacked layer's ``state_dict`` would run
        bitsandbytes' lossy inverse instead."""
        modules = dict(model.named_modules())
        for name, (data, quant_state) in getattr(model, PRISTINE_ATTR, {}).items():
            weight = modules[name].weight
            if getattr(weight.quant_state, "packing_format_for_cpu", False):
                weight.data = data.clone()
                weight.quant_state = copy.deepcopy(quant_state)
