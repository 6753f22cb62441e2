from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoModelForCausalLM

from autoslim.compress import build, save, validate
from autoslim.compress.quantize import quantize
from autoslim.errors import UnsupportedError
from autoslim.recipe import Recipe


@pytest.mark.parametrize(
    "recipe",
    [
        Recipe(bits=4, quant_type="nf4", double_quant=False),
        Recipe(bits=4, quant_type="nf4", double_quant=True),
        Recipe(bits=4, quant_type="fp4", double_quant=False),
        Recipe(bits=8),
    ],
    ids=lambda r: r.describe(),
)
def test_saved_after_a_forward_pass_reloads_at_the_same_perplexity(
    recipe: Recipe, base: Callable[..., Any], ppl: Callable[[Any], float], tmp_path: Path
) -> None:
    """The NF4-without-double-quant mismatch: bitsandbytes repacks 4-bit weights for CPU on the
    first forward; saving afterwards must still write what reloads to the same model."""
    loaded = base("qwen3")
    model = quantize(loaded.model, recipe, "cpu")
    first = ppl(model)  # the forward pass that repacks
    save(model, loaded.tokenizer, tmp_path)
    assert ppl(model) == first  # saving does not change the in-memory model
    assert ppl(AutoModelForCausalLM.from_pretrained(tmp_path)) == first
    save(model, loaded.tokenizer, tmp_path / "again")  # and saving twice writes the same
    assert ppl(AutoModelForCausalLM.from_pretrained(tmp_path / "again")) == first


def test_quantize_leaves_its_input_alone(base: Callable[..., Any]) -> None:
    model = base("qwen3").model
    quantize(model, Recipe(bits=4), "cpu")
    assert type(model.model.layers[0].mlp.down_proj).__name__ == "Linear"


def test_4bit_on_cpu_refuses_shapes_its_kernels_cannot_run(base: Callable[..., Any]) -> None:
    config = base("qwen3", num_attention_heads=8, num_key_value_heads=8, head_dim=16).model.config
    # 7 heads x 16 = 112 query channels: neither a multiple of 32 nor of 64
    match = "q_proj would have 128 inputs and 112 outputs.*multiples of 64 and 32"
    with pytest.raises(UnsupportedError, match=match):
        validate(Recipe(bits=4, drop_heads_per_layer=1), config)
    validate(Recipe(bits=8, drop_heads_per_layer=1), config)
    validate(Recipe(bits=4, drop_heads_per_layer=4), config)


def test_quantization_on_a_device_bitsandbytes_cannot_use_is_refused(
    base: Callable[..., Any], corpus: Any
) -> None:
    with pytest.raises(UnsupportedError, match="device 'mps'"):
        build(base("qwen3"), Recipe(bits=4), corpus=corpus, device="mps")
