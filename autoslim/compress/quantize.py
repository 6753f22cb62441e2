"""quantize: bitsandbytes 8-bit and 4-bit (NF4 / FP4, optional double quantization).

The model is quantized the way an export is reloaded: written to a temporary folder and loaded
back by ``from_pretrained`` with a ``BitsAndBytesConfig``, so the in-memory model and a reload of
its saved folder go through the same code.

Why a saved 4-bit model reloaded at a different perplexity: bitsandbytes' CPU backend repacks a
4-bit weight on its first inference forward, turning its absmax scales into a transposed
bfloat16 matrix. Saving runs the inverse, which (0.50.2) leaves that transposed matrix in place
without double quantization, so a reload reads the scales in the wrong order, and with double
quantization re-quantizes the rounded scales (lossy). It also mutates the in-memory model. So
``quantize`` keeps each 4-bit layer's state from before any forward (``PRISTINE_ATTR``) and
``save`` puts it back before writing: the reload then repacks exactly as the in-memory model did.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch

from autoslim.errors import UnsupportedError
from autoslim.recipe import Recipe

logger = logging.getLogger(__name__)

PRISTINE_ATTR = "_autoslim_quantized_state"
# bitsandbytes' CPU 4-bit kernels need these multiples of (in_features, out_features).
CPU_4BIT_MULTIPLES = (64, 32)


def bitsandbytes_config(recipe: Recipe, device: str) -> Any:
    from transformers import BitsAndBytesConfig

    if recipe.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch.bfloat16 if device.startswith("cuda") else torch.float32
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=recipe.quant_type,
        bnb_4bit_use_double_quant=recipe.double_quant,
        bnb_4bit_compute_dtype=compute,
    )


def check_backend(recipe: Recipe, device: str) -> None:
    """Refuse quantization that this machine's bitsandbytes cannot run, before any work."""
    if recipe.bits == 16:
        return
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise UnsupportedError(
            f"bits={recipe.bits} needs bitsandbytes: pip install bitsandbytes (or use bits=16)"
        ) from e
    kind = torch.device(device).type
    if kind == "cuda" and not torch.cuda.is_available():
        raise UnsupportedError(f"device={device!r}: CUDA is not available; use device='cpu'")
    if kind not in ("cpu", "cuda"):
        raise UnsupportedError(
            f"bits={recipe.bits} on device {device!r}: bitsandbytes runs on 'cpu' and 'cuda' "
            "here; use one of those or bits=16"
        )


def check_shapes(shapes: dict[str, tuple[int, int]], recipe: Recipe, device: str) -> None:
    """4-bit on CPU needs in_features % 64 == 0 and out_features % 32 == 0 on every layer."""
    if recipe.bits != 4 or torch.device(device).type != "cpu":
        return
    need_in, need_out = CPU_4BIT_MULTIPLES
    for name, (n_in, n_out) in shapes.items():
        if n_in % need_in or n_out % need_out:
            raise UnsupportedError(
                f"bits=4 on CPU: {name} would have {n_in} inputs and {n_out} outputs, but "
                f"bitsandbytes' CPU kernels need multiples of {need_in} and {need_out}; drop "
                "heads so the kept width is a multiple of 64, or use bits=8/16 or a GPU"
            )


def quantize(model: Any, recipe: Recipe, device: str) -> Any:
    """A bitsandbytes-quantized copy of ``model`` on ``device``; ``model`` is left as is."""
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory(prefix="autoslim-quantize-") as folder:
        model.save_pretrained(folder)
        quantized: Any = AutoModelForCausalLM.from_pretrained(
            folder,
            quantization_config=bitsandbytes_config(recipe, device),
            device_map={"": device},
            dtype=torch.float32 if device == "cpu" else torch.bfloat16,
        )
    quantized.eval()
    # Captured before any forward pass: bitsandbytes' CPU repacking has not happened yet.
    pristine: dict[str, tuple[torch.Tensor, Any]] = {}
    for name, module in quantized.named_modules():
        if isinstance(module, bnb.nn.modules.Linear4bit):
            weight: Any = module.weight
            pristine[name] = (weight.data.clone(), copy.deepcopy(weight.quant_state))
    setattr(quantized, PRISTINE_ATTR, pristine)
    logger.info("quantized to %s", recipe.describe())
    return quantized


def save(model: Any, tokenizer: Any, folder: str | Path) -> None:
    """``save_pretrained`` of model and tokenizer that reloads to the same outputs.

    For a model from ``quantize``, 4-bit layers are first put back to the state captured at
    quantization (their next forward repacks them exactly as before).
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    modules = dict(model.named_modules())
    for name, (data, quant_state) in getattr(model, PRISTINE_ATTR, {}).items():
        weight = modules[name].weight
        if getattr(weight.quant_state, "packing_format_for_cpu", False):
            weight.data = data.clone()
            weight.quant_state = copy.deepcopy(quant_state)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
