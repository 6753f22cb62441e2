"""torchao through transformers' ``TorchAoConfig``: int8 weight-only, int4 weight-only, and int8
dynamic activation × int8 weight.

What torchao 0.18 runs on this CPU (checked on tiny models, fp32 / bf16 / fp16):

- bits=8: ``Int8WeightOnlyConfig`` (per-row scales); with ``activations=True``,
  ``Int8DynamicActivationInt8WeightConfig``.
- bits=4: ``IntxWeightOnlyConfig(weight_dtype=torch.int4,  # type: ignore[attr-defined]
                granularity=PerGroup(32))``. Its
  weights are int4 values stored one per int8 byte (plus a scale and zero point per group of 32),
  so it is *larger* than bits=8, not smaller: an accuracy point, not a size one. The packed int4
  formats do not run here: ``Int4WeightOnlyConfig`` plain needs the ``mslk`` kernels,
  ``plain_int32`` has no CPU kernel, ``tile_packed_to_4d`` needs CUDA and bfloat16, and
  ``IntxWeightOnlyConfig``'s opaque packings need torchao's C++ kernel library.
- bits=4 with int8 dynamic activations is refused: without the kernel library it runs the same
  unpacked int8 weights with an extra activation round trip.
- bits=8 computing in fp16 on the CPU is refused: both int8 schemes multiply by the raw int8
  weights before applying the per-row scale, so a layer whose true outputs are below 100 sums
  past fp16's 65,504 (a SmolLM2-135M MLP: inf perplexity; bf16 and fp32 lose under 1 %).
  bits=4 (grouped scales) stays finite in fp16.

Every scheme above saves with safetensors and reloads through plain ``from_pretrained`` to the
same outputs (``config.json`` carries the serialized torchao config). transformers' torchao
quantizer converts only ``nn.Linear``, so GPT-2 (``Conv1D`` layers) is refused rather than
silently left unquantized.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from autoslim.compress.backends.base import QuantBackend, QuantSpec
from autoslim.errors import UnsupportedError

INT4_GROUP_SIZE = 32


class TorchaoBackend(QuantBackend):
    name = "torchao"
    install_hint = "pip install torchao"

    def available(self) -> str | None:
        if importlib.util.find_spec("torchao") is None:
            return f"torchao is not installed: {self.install_hint} (or use bits=16)"
        return None

    def devices(self) -> tuple[str, ...]:
        return ("cpu", "cuda")

    def supports(self, spec: QuantSpec) -> str | None:
        if spec.bits not in (4, 8):
            return f"bits={spec.bits}: torchao quantizes to 8 or 4 bits here"
        if spec.bits == 4 and spec.activations:
            return (
                "bits=4 with activations=True: this torchao build has no int8 x int4 CPU "
                "kernel (it would run unpacked int8 weights); use bits=8 with activations, or "
                "bits=4 without"
            )
        return None

    def supports_family(self, family: str) -> str | None:
        if family == "gpt2":
            return (
                "GPT-2's layers are transformers Conv1D, and transformers' torchao quantizer "
                "converts only nn.Linear; use quant_backend='bitsandbytes'"
            )
        return None

    def check_shapes(
        self, spec: QuantSpec, device: str, shapes: dict[str, tuple[int, int]], dtype: torch.dtype
    ) -> None:
        """int8 overflows fp16 on the CPU; int4 groups of 32 input channels: every layer's
        in_features must be a multiple."""
        if spec.bits == 8 and dtype == torch.float16 and torch.device(device).type == "cpu":
            raise UnsupportedError(
                "bits=8 with torchao in fp16 on cpu: its int8 kernels multiply by the unscaled "
                "int8 weights and overflow fp16 (inf perplexity); use precision='bf16' or 'fp32'"
            )
        if spec.bits != 4:
            return
        for name, (n_in, _) in shapes.items():
            if n_in % INT4_GROUP_SIZE:
                raise UnsupportedError(
                    f"bits=4 with torchao: {name} would have {n_in} inputs, but int4 groups "
                    f"need a multiple of {INT4_GROUP_SIZE}; prune to a multiple of "
                    f"{INT4_GROUP_SIZE} or use bits=8"
                )

    def quantization_config(self, spec: QuantSpec, device: str, dtype: torch.dtype) -> Any:
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            IntxWeightOnlyConfig,
            PerGroup,
        )
        from transformers import TorchAoConfig

        scheme: Any
        if spec.bits == 4:
            scheme = IntxWeightOnlyConfig(
                weight_dtype=torch.int4,  # type: ignore[attr-defined]
                granularity=PerGroup(INT4_GROUP_SIZE),
            )
        elif spec.activations:
            scheme = Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)
        else:
            scheme = Int8WeightOnlyConfig(set_inductor_config=False)
        return TorchAoConfig(scheme)
