from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from autoslim import data, models
from autoslim.build import STAGES, build
from autoslim.compress.backends import save
from autoslim.compress.distill import TeacherCache
from autoslim.recipe import Recipe

from .conftest import PROTOCOL, weights_hash

COMPOSED = Recipe(
    prune_ratio=0.5, drop_heads=((0, 1), (1, 0), (1, 2)), kd_steps=2, bits=4, double_quant=False
)


def test_composed_recipe_is_deterministic_and_leaves_the_base_alone(
    base: Callable[..., Any], corpus: Any
) -> None:
    loaded = base("qwen3")
    before = weights_hash(loaded.model)
    first = build(loaded, COMPOSED, corpus=corpus, seed=3)
    second = build(loaded, COMPOSED, corpus=corpus, seed=3)
    assert weights_hash(loaded.model) == before
    assert weights_hash(first.model) == weights_hash(second.model)
    assert set(first.stage_seconds) == set(STAGES)
    info = first.info
    assert info["recipe"] == COMPOSED.to_params()
    assert Recipe.from_params(info["recipe"]) == COMPOSED
    assert info["intermediate_size"] == 128
    assert info["heads_kept_per_layer"] == [3, 2]
    assert info["parameters_after"] < info["parameters_before"]
    assert info["quantization"] == "bitsandbytes nf4"


def test_check_runs_before_distillation_and_can_abandon(
    base: Callable[..., Any], corpus: Any
) -> None:
    seen: list[tuple[str, int]] = []

    class Abandon(Exception):
        pass

    def check(stage: str, model: Any) -> None:
        seen.append((stage, model.config.intermediate_size))
        raise Abandon

    cache = TeacherCache(base("qwen3").model, torch.arange(4096) % 500, window=64)
    with pytest.raises(Abandon):
        build(base("qwen3"), COMPOSED, corpus=corpus, check=check, teacher_cache=cache)
    assert seen == [("drop_heads, structured_prune", 128)]
    assert cache.teacher_seconds == 0.0


def test_identity_recipe_returns_an_equal_copy(base: Callable[..., Any], corpus: Any) -> None:
    loaded = base("qwen3")
    result = build(loaded, Recipe(), corpus=corpus)
    assert result.model is not loaded.model
    assert weights_hash(result.model) == weights_hash(loaded.model)


@pytest.mark.slow
def test_reference_composed_recipe_saves_and_reloads(
    reference: models.LoadedModel, corpus: Any, tmp_path: Path
) -> None:
    from autoslim.measure.perplexity import perplexity

    ids = data.tokens(reference.tokenizer, corpus, "eval")
    recipe = Recipe(prune_ratio=0.3, drop_heads_per_layer=2, kd_steps=2, bits=4)
    result = build(reference, recipe, corpus=corpus)
    assert result.info["intermediate_size"] == 512  # 768 x 0.7 rounds to 512: a third removed
    assert result.info["mlp_fraction_removed"] == pytest.approx(1 / 3)
    assert result.model.config.num_attention_heads == 6
    built = perplexity(result.model, ids, PROTOCOL).perplexity
    base_ppl = perplexity(reference.model, ids, PROTOCOL).perplexity
    assert base_ppl < built < 5 * base_ppl  # a third of the MLP gone, 2 KD steps: worse, sane
    save(result.model, reference.tokenizer, tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert perplexity(reloaded, ids, PROTOCOL).perplexity == built
