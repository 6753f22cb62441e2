"""The support matrix, derived from the operators' declarations: every "yes" cell builds on a
tiny model of that family and saves → reloads in plain transformers at the same perplexity;
every "no" cell is refused up front with the declared reason."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoModelForCausalLM

from autoslim.build import build, validate
from autoslim.compress.backends import save
from autoslim.compress.families import FAMILIES
from autoslim.errors import UnsupportedError
from autoslim.operators import OPERATORS
from autoslim.recipe import Recipe

RECIPES = {
    "drop_layers": Recipe(drop_layers=1),
    "drop_heads": Recipe(drop_heads_per_layer=2),
    "structured_prune": Recipe(prune_ratio=0.5),
    "recovery": Recipe(prune_ratio=0.5, recovery="block_kd", recovery_steps=8),
    "distill": Recipe(kd_steps=1),
    "precision": Recipe(precision="bf16"),
    "quantize": Recipe(bits=4, double_quant=False),
}
YES = [(f, op.name) for f in sorted(FAMILIES) for op in OPERATORS if f not in op.unsupported]
NO = [(f, op.name) for f in sorted(FAMILIES) for op in OPERATORS if f in op.unsupported]


def test_every_operator_has_a_cell_recipe() -> None:
    assert set(RECIPES) == {op.name for op in OPERATORS}
    for op in OPERATORS:
        assert op.active(RECIPES[op.name]), op.name


@pytest.mark.parametrize(("family", "operator"), YES)
def test_supported_cell_builds_saves_and_reloads(
    family: str,
    operator: str,
    base: Callable[..., Any],
    corpus: Any,
    ppl: Callable[[Any], float],
    tmp_path: Path,
    bf16_cpu: None,
) -> None:
    loaded = base(family)
    result = build(loaded, RECIPES[operator], corpus=corpus)
    built = ppl(result.model)
    save(result.model, loaded.tokenizer, tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    # 16-bit: the reload may pick another attention kernel, whose rounding differs
    sixteen = operator == "precision"
    assert ppl(reloaded) == pytest.approx(built, rel=2e-3 if sixteen else 1e-5)
    shapes = (
        "intermediate_size",
        "ffn_dim",
        "n_inner",
        "num_attention_heads",
        "head_dim",
        "num_hidden_layers",
        "n_layer",
    )
    for key in shapes:
        assert getattr(reloaded.config, key, None) == getattr(result.model.config, key, None)
    if operator in ("structured_prune", "recovery"):
        assert result.info["intermediate_size"] == result.info["intermediate_size_before"] // 2
    if operator == "drop_heads":
        assert reloaded.config.num_attention_heads == 2
    if operator == "drop_layers":
        assert len(result.info["dropped_layers"]) == 1
        layers = getattr(loaded.model.config, "num_hidden_layers", None)
        assert reloaded.config.num_hidden_layers == layers - 1
    if operator == "precision":
        assert reloaded.dtype == result.model.dtype != next(loaded.model.parameters()).dtype
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
