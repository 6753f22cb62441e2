"""The operator declarations: one source for Recipe, search space, study files, flags and docs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from autoslim import config as study_config
from autoslim.errors import ConfigError, UnsupportedError
from autoslim.operators import KNOBS, OPERATORS, knob_table, precision, support_matrix
from autoslim.recipe import Recipe

README = Path(__file__).parents[1] / "README.md"


def _block(name: str) -> str:
    text = README.read_text(encoding="utf-8")
    found = re.search(f"<!-- {name}:begin -->\n(.*?)\n<!-- {name}:end -->", text, re.S)
    assert found, f"README has no generated {name} block"
    return found.group(1)


def test_readme_tables_are_the_generated_ones() -> None:
    from autoslim.compress import FAMILIES

    assert _block("knobs") == knob_table()
    assert _block("support") == support_matrix(tuple(sorted(FAMILIES)))


def test_every_knob_is_a_recipe_field_a_flag_and_a_search_key() -> None:
    recipe = Recipe()
    assert list(recipe.to_params()) == list(KNOBS)
    for name, knob in KNOBS.items():
        assert getattr(recipe, name) == knob.default
        assert knob.flag == "--" + name.replace("_", "-")
    assert set(study_config.default_search()) == set(KNOBS)


def test_knob_order_lets_each_active_rule_read_only_earlier_knobs() -> None:
    seen: dict[str, object] = {}
    for name, knob in KNOBS.items():
        knob.active(seen)  # would raise or misread if it needed a later knob
        seen[name] = knob.default
    names = [op.name for op in OPERATORS]
    assert names.index("precision") < names.index("quantize")


def test_inactive_knobs_are_not_sampled_params() -> None:
    recipe = Recipe(bits=8, quant_backend="torchao", kd_steps=0)
    active = recipe.active_params()
    assert "quant_activations" in active and "quant_type" not in active
    assert "kd_temperature" not in active


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"prune_ratio": 1.0}, "prune_ratio=1.0: must be a number >= 0 and < 1"),
        ({"precision": "int3"}, "precision='int3': must be one of 'fp32', 'bf16', 'fp16'"),
        ({"quant_backend": "gptq"}, "quant_backend='gptq'"),
        ({"drop_heads": "0:1", "drop_heads_per_layer": 1}, "both set"),
        ({"flavour": 1}, "unknown recipe key(s) flavour"),
        ({"drop_layers": -1}, "drop_layers=-1"),
    ],
)
def test_bad_knob_values_name_the_knob(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Recipe.from_params(values)


def test_precision_refused_where_the_device_would_emulate_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx2"}))
    assert precision.supported("cpu") == ["fp32"]
    assert precision.resolve("auto", "fp16", "cpu") == "fp32"
    with pytest.raises(UnsupportedError, match="none of avx512_bf16, amx_bf16"):
        precision.resolve("bf16", "fp16", "cpu")
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"amx_bf16"}))
    assert precision.resolve("auto", "fp16", "cpu") == "bf16"
    assert precision.resolve("auto", "fp32", "cpu") == "fp32"


def test_recipe_is_immutable_hashable_and_round_trips() -> None:
    recipe = Recipe(drop_heads="2:5,0:1", precision="bf16", bits=8, quant_backend="torchao")
    assert recipe.drop_heads == ((0, 1), (2, 5))
    assert Recipe.from_params(recipe.to_params()) == recipe
    assert len({recipe, Recipe.from_params(recipe.to_params())}) == 1
    assert recipe.replace(bits=16).is_identity("fp32") is False
    assert Recipe(precision="bf16").is_identity("bf16")
    with pytest.raises(AttributeError, match="immutable"):
        recipe.bits = 4  # type: ignore[misc]


def test_backend_choices_are_the_registered_backends() -> None:
    from autoslim.compress.backends import BACKENDS
    from autoslim.operators.quantize import BACKENDS as CHOICES

    assert set(CHOICES) == set(BACKENDS) == set(KNOBS["quant_backend"].choices)
