from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from autoslim.build import build, validate
from autoslim.compress.calibration import calibration_batch
from autoslim.compress.families import FAMILIES
from autoslim.compress.heads import HeadShape, least_important, plan
from autoslim.errors import ConfigError, UnsupportedError
from autoslim.recipe import Recipe

SHAPE = HeadShape(layers=2, heads=8, kv_heads=2, head_dim=32, hidden=256)


def test_even_drops_are_removed_physically() -> None:
    p = plan([{0, 4}, {1, 7}], SHAPE)
    assert (p.heads, p.kv_heads) == (6, 2)
    assert p.remove_heads == ((0, 4), (1, 7))
    assert p.mask_heads == ((), ())


def test_uneven_drops_remove_the_shared_part_and_mask_the_rest() -> None:
    p = plan([{0, 1, 4}, {5}], SHAPE)  # layer 1 drops nothing from group 0
    assert (p.heads, p.kv_heads) == (8, 2)
    assert p.mask_heads == ((0, 1, 4), (5,))
    p = plan([{0, 1, 4, 5}, {2, 6}], SHAPE)
    assert p.heads == 6
    assert p.remove_heads == ((0, 4), (2, 6))
    assert p.mask_heads == ((1, 5), ())
    assert p.info()["heads_kept_per_layer"] == [4, 6]


def test_whole_groups_take_their_key_value_head() -> None:
    p = plan([{0, 1, 2, 3}, {4, 5, 6, 7}], SHAPE)
    assert (p.heads, p.kv_heads) == (4, 1)
    assert p.remove_groups == ((0,), (1,))


def _zero_heads_reference(model: Any, pairs: list[tuple[int, int]], head_dim: int) -> None:
    with torch.no_grad():
        for layer, head in pairs:
            o = model.model.layers[layer].self_attn.o_proj.weight
            o[:, head * head_dim : (head + 1) * head_dim] = 0


@pytest.mark.parametrize(
    "pairs",
    [
        [(0, 1), (1, 3)],  # one per layer, same group size: masked (keeps GQA even)
        [(0, 0), (0, 2), (1, 1), (1, 3)],  # one per group in each layer: physical
        [(0, 0), (0, 1), (1, 2), (1, 3)],  # a whole group per layer: removes kv heads
        [(0, 0), (0, 2), (0, 3), (1, 1), (1, 3)],  # physical + masked
    ],
)
def test_dropping_heads_computes_exactly_the_model_without_them(
    pairs: list[tuple[int, int]], base: Callable[..., Any], corpus: Any
) -> None:
    loaded = base("qwen3")
    reference = base("qwen3").model
    _zero_heads_reference(reference, pairs, 32)
    result = build(loaded, Recipe(drop_heads=tuple(pairs)), corpus=corpus)
    ids = torch.randint(0, 500, (2, 32))
    assert torch.allclose(
        result.model(input_ids=ids).logits, reference(input_ids=ids).logits, atol=1e-5
    )


def test_masked_heads_stay_zero_through_distillation(
    base: Callable[..., Any], corpus: Any
) -> None:
    result = build(
        base("qwen3"), Recipe(drop_heads=((0, 1),), kd_steps=2, kd_lr=1e-2), corpus=corpus
    )
    o = result.model.model.layers[0].self_attn.o_proj.weight
    assert result.info["masked_heads"] == "0:1"
    assert torch.count_nonzero(o[:, 32:64]) == 0
    assert torch.count_nonzero(o[:, :32]) > 0


def test_per_layer_count_drops_least_important_evenly(
    base: Callable[..., Any], corpus: Any
) -> None:
    loaded = base("qwen3")
    with torch.no_grad():  # make head 3 of every layer the least important
        for block in loaded.model.model.layers:
            block.self_attn.o_proj.weight[:, 96:128] *= 0.01
    result = build(loaded, Recipe(drop_heads_per_layer=2), corpus=corpus)
    assert result.model.config.num_attention_heads == 2
    assert result.model.config.num_key_value_heads == 2
    assert result.info["heads_kept_per_layer"] == [2, 2]
    pairs = zip(result.model.model.layers, loaded.model.model.layers, strict=True)
    for block, original in pairs:  # one head per group: head 3 went, head 2 is now last
        kept = block.self_attn.o_proj.weight
        assert kept.shape == (128, 64)
        assert torch.equal(kept[:, 32:], original.self_attn.o_proj.weight[:, 64:96])


@pytest.mark.parametrize(
    ("recipe", "error", "match"),
    [
        (Recipe(drop_heads=((0, 4),)), ConfigError, "0:4 does not exist.*heads 0..3"),
        (Recipe(drop_heads=((2, 0),)), ConfigError, "2:0 does not exist.*layers 0..1"),
        (
            Recipe(drop_heads=((1, 0), (1, 1), (1, 2), (1, 3))),
            ConfigError,
            "removes all 4 heads of layer 1",
        ),
        (Recipe(drop_heads_per_layer=1), ConfigError, "cannot keep the 2 key-value groups even"),
        (Recipe(drop_heads_per_layer=4), ConfigError, "removes every head"),
    ],
)
def test_bad_head_recipes_are_refused(
    recipe: Recipe, error: type[Exception], match: str, base: Callable[..., Any]
) -> None:
    with pytest.raises(error, match=match):
        validate(recipe, base("qwen3").model.config)


def test_llama_refuses_head_counts_that_do_not_divide_hidden(base: Callable[..., Any]) -> None:
    config = base("llama", num_key_value_heads=4).model.config
    with pytest.raises(UnsupportedError, match="3 query heads.*hidden_size=128.*Llama"):
        validate(Recipe(drop_heads_per_layer=1), config)
    validate(Recipe(drop_heads_per_layer=2), config)


@pytest.fixture(scope="module")
def calibration(tiny_tok: Any, corpus: Any) -> torch.Tensor:
    return calibration_batch(tiny_tok, corpus, windows=4, window=32)


def test_activation_importance_finds_the_quiet_head(
    base: Callable[..., Any], calibration: torch.Tensor
) -> None:
    """Head 3's values are x 1e-3 and its o_proj columns x 1e3: the same function, a quiet
    head output read by large weights. Magnitude keeps it; the mean head output drops it."""
    model = base("llama", num_key_value_heads=4).model
    with torch.no_grad():
        for block in model.model.layers:
            block.self_attn.v_proj.weight[96:128] *= 1e-3
            block.self_attn.o_proj.weight[:, 96:128] *= 1e3
    family = FAMILIES["llama"]
    chosen = least_important(model, family, 1, importance="activation", calibration=calibration)
    assert chosen == [{3}, {3}]
    assert all(3 not in layer for layer in least_important(model, family, 1))


def test_wanda_importance_weighs_output_weights_by_their_inputs(
    base: Callable[..., Any], calibration: torch.Tensor
) -> None:
    model = base("llama", num_key_value_heads=4).model
    with torch.no_grad():
        for block in model.model.layers:
            block.self_attn.o_proj.weight[:, 64:96] *= 1e-3
    chosen = least_important(
        model, FAMILIES["llama"], 1, importance="wanda", calibration=calibration
    )
    assert chosen == [{2}, {2}]


def test_head_activation_importance_needs_calibration(base: Callable[..., Any]) -> None:
    with pytest.raises(ConfigError, match="prune_importance='activation'.*or use 'magnitude'"):
        least_important(base("qwen3").model, FAMILIES["qwen3"], 2, importance="activation")
