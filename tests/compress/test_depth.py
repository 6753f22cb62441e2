from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from autoslim.compress.calibration import calibration_batch
from autoslim.compress.depth import check, drop_layers, layer_scores, remap_heads
from autoslim.compress.families import FAMILIES, get_path, layers
from autoslim.errors import ConfigError, UnsupportedError

# Per family: the projections that write a block's two residual updates.
OUTPUTS = {
    "gpt2": ("attn.c_proj", "mlp.c_proj"),
    "opt": ("self_attn.out_proj", "fc2"),
    **{name: ("self_attn.o_proj", "mlp.down_proj") for name in ("qwen2", "qwen3", "mistral")},
    "llama": ("self_attn.o_proj", "mlp.down_proj"),
}


@pytest.fixture(scope="module")
def calibration(tiny_tok: Any, corpus: Any) -> torch.Tensor:
    return calibration_batch(tiny_tok, corpus, windows=4, window=32)


def _make_identity(model: Any, family: str, index: int) -> None:
    """Zero both residual updates of block ``index``: the block passes its input through."""
    block = layers(model, FAMILIES[family])[index]
    with torch.no_grad():
        for path in OUTPUTS[family]:
            module = get_path(block, path)
            module.weight.zero_()
            if module.bias is not None:
                module.bias.zero_()


def test_scores_are_finite_deterministic_angles(
    base: Callable[..., Any], calibration: torch.Tensor
) -> None:
    model = base("qwen3", num_hidden_layers=3).model
    scores = layer_scores(model, FAMILIES["qwen3"], calibration)
    assert len(scores) == 3
    assert all(math.isfinite(s) and 0.0 < s <= 1.0 for s in scores)
    assert layer_scores(model, FAMILIES["qwen3"], calibration) == scores


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_dropped_model_reloads_and_generates_the_same_with_and_without_cache(
    family: str, base: Callable[..., Any], calibration: torch.Tensor, tmp_path: Path
) -> None:
    """Layer 0 does nothing, so it is the one dropped, the function is unchanged, and the kept
    layers move up one index: the KV cache must follow them, in memory and after reload."""
    from transformers import AutoModelForCausalLM

    loaded = base(family, num_hidden_layers=3)
    model = loaded.model
    _make_identity(model, family, 0)
    ids = torch.randint(0, 500, (2, 24))
    before = model(input_ids=ids).logits
    info = drop_layers(model, FAMILIES[family], 1, calibration)
    assert info["kept_layers"] == [1, 2]
    assert info["dropped_layers"] == [0]
    assert info["layer_scores"][0] == pytest.approx(0.0, abs=1e-3)
    assert torch.allclose(model(input_ids=ids).logits, before, atol=1e-5)

    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    reloaded.eval()
    assert reloaded.config.num_hidden_layers == 2
    assert len(getattr(reloaded.config, "layer_types", None) or [None, None]) == 2
    assert torch.allclose(reloaded(input_ids=ids).logits, before, atol=1e-5)
    prompt = ids[:1, :8]
    greedy = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": 0}
    cached = reloaded.generate(prompt, use_cache=True, **greedy)
    uncached = reloaded.generate(prompt, use_cache=False, **greedy)
    assert cached.shape == (1, 20)
    assert torch.equal(cached, uncached)
    assert torch.equal(model.generate(prompt, use_cache=True, **greedy), cached)


def test_the_least_changing_layers_go(base: Callable[..., Any], calibration: torch.Tensor) -> None:
    model = base("llama", num_hidden_layers=4).model
    _make_identity(model, "llama", 1)
    _make_identity(model, "llama", 3)
    info = drop_layers(model, FAMILIES["llama"], 2, calibration)
    assert info["dropped_layers"] == [1, 3]
    assert info["kept_layers"] == [0, 2]
    assert [block.self_attn.layer_idx for block in model.model.layers] == [0, 1]


@pytest.mark.parametrize("n", [-1, 3, 5])
def test_bad_layer_counts_are_refused(n: int, base: Callable[..., Any]) -> None:
    config = base("qwen3", num_hidden_layers=3).model.config
    with pytest.raises(ConfigError, match=rf"drop_layers={n}.*3 decoder layers.*use 0\.\.2"):
        check(config, FAMILIES["qwen3"], n)


def test_gpt2_scaled_by_layer_index_is_refused(base: Callable[..., Any]) -> None:
    config = base("gpt2", scale_attn_by_inverse_layer_idx=True).model.config
    with pytest.raises(UnsupportedError, match="scale_attn_by_inverse_layer_idx"):
        check(config, FAMILIES["gpt2"], 1)
    check(config, FAMILIES["gpt2"], 0)


def test_head_drops_follow_their_layers() -> None:
    kept = [0, 2, 3]
    assert remap_heads({0: [1], 1: [2, 3], 3: [0]}, kept) == {0: [1], 2: [0]}
    assert remap_heads(((0, 1), (1, 2), (2, 5), (3, 0)), kept) == ((0, 1), (1, 5), (2, 0))
