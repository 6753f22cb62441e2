"""The support matrix: every "yes" cell builds on a tiny model of that family and saves →
reloads in plain transformers at the same perplexity; every "no" cell is refused up front."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoModelForCausalLM

from autoslim.compress import FAMILIES, OPERATORS, build, save, validate
from autoslim.errors import UnsupportedError
from autoslim.recipe import Recipe

RECIPES = {
    "structured_prune": Recipe(prune_ratio=0.5),
    "drop_heads": Recipe(drop_heads_per_layer=2),
    "distill": Recipe(kd_steps=1),
    "quantize": Recipe(bits=4, double_quant=False),
}
YES = [
    (f, op) for f, family in sorted(FAMILIES.items()) for op in OPERATORS if op in family.operators
]
NO = [
    (f, op)
    for f, family in sorted(FAMILIES.items())
    for op in OPERATORS
    if op not in family.operators
]


@pytest.mark.parametrize(("family", "operator"), YES)
def test_supported_cell_builds_saves_and_reloads(
    family: str,
    operator: str,
    base: Callable[..., Any],
    corpus: Any,
    ppl: Callable[[Any], float],
    tmp_path: Path,
) -> None:
    loaded = base(family)
    result = build(loaded, RECIPES[operator], corpus=corpus)
    built = ppl(result.model)
    save(result.model, loaded.tokenizer, tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert ppl(reloaded) == pytest.approx(built, rel=1e-5)
    shapes = ("intermediate_size", "ffn_dim", "n_inner", "num_attention_heads", "head_dim")
    for key in shapes:
        assert getattr(reloaded.config, key, None) == getattr(result.model.config, key, None)
    if operator == "structured_prune":
        assert result.info["intermediate_size"] == result.info["intermediate_size_before"] // 2
    if operator == "drop_heads":
        assert reloaded.config.num_attention_heads == 2
    if operator == "quantize":
        assert any(type(m).__name__ == "Linear4bit" for m in reloaded.modules())


@pytest.mark.parametrize(("family", "operator"), NO)
def test_unsupported_cell_is_refused_before_work(
    family: str, operator: str, base: Callable[..., Any]
) -> None:
    with pytest.raises(UnsupportedError, match=f"{operator} is not supported for {family}"):
        validate(RECIPES[operator], base(family).model.config)


def test_unknown_family_is_refused() -> None:
    class Config:
        model_type = "bloom"

    with pytest.raises(UnsupportedError, match="'bloom' is not supported"):
        validate(Recipe(prune_ratio=0.3), Config())
