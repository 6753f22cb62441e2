"""The operator declarations: one source for Recipe, search space, study files, flags and docs."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from autoslim import precisions, studies
from autoslim.cli._common import add_recipe_args
from autoslim.errors import ConfigError, UnsupportedError
from autoslim.operators import OPERATORS
from autoslim.recipe import KNOBS, Recipe, knob_table, support_matrix
from autoslim.search import config as study_config

README = Path(__file__).parents[1] / "README.md"


def _block(name: str) -> str:
    text = README.read_text(encoding="utf-8")
    found = re.search(f"<!-- {name}:begin -->\n(.*?)\n<!-- {name}:end -->", text, re.S)
    assert found, f"README has no generated {name} block"
    return found.group(1)


def test_readme_tables_are_the_generated_ones() -> None:
    from autoslim.compress.families import FAMILIES

    assert _block("knobs") == knob_table()
    assert _block("support") == support_matrix(tuple(sorted(FAMILIES)))


def test_every_knob_is_a_recipe_field_a_flag_and_a_study_file_key(tmp_path) -> None:
    recipe = Recipe()
    assert list(recipe.to_params()) == list(KNOBS)
    parser = argparse.ArgumentParser()
    add_recipe_args(parser)
    shown = parser.format_help()
    for name, knob in KNOBS.items():
        assert getattr(recipe, name) == knob.default
        assert f"{knob.flag} " in shown, f"autoslim measure offers no {knob.flag}"
    # a [search] table holding every knob, each fixed at its default, is a valid study file
    fixed = {name: [knob.to_param(knob.default)] for name, knob in KNOBS.items()}
    fixed["drop_heads"] = [""]
    path = tmp_path / "all.toml"
    lines = ['[model]\nname = "reference"\n[search]']
    lines += [f"{name} = {json.dumps(values)}" for name, values in fixed.items()]
    path.write_text("\n".join(lines) + "\n")
    space = study_config.load(path, check_model=False).search
    assert set(space.knobs) == set(KNOBS)


def _variants() -> list[Recipe]:
    """Recipes that set, one at a time, every knob to each value it allows (or its largest)."""
    out = [Recipe()]
    for name, knob in KNOBS.items():
        for value in knob.choices or ():
            try:
                out.append(Recipe(**{name: value}))
            except ConfigError:
                continue  # a value another knob must enable first
    for name in ("demo", "smollm2"):
        space = study_config.load(studies.path(name), check_model=False).search
        out += study_config.extreme_recipes(space)
    return out


def test_each_knob_is_active_by_the_knobs_before_it_alone() -> None:
    # a sampler decides each knob from the ones already chosen: reading a later knob would
    # make the same prefix sometimes active, sometimes not
    names = list(KNOBS)
    for recipe in _variants():
        params = recipe.to_params()
        for i, name in enumerate(names):
            earlier = {n: params[n] for n in names[:i]}
            assert KNOBS[name].active(earlier) == KNOBS[name].active(params), (name, recipe)
    ops = [op.name for op in OPERATORS]
    assert ops.index("precision") < ops.index("quantize")


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
    monkeypatch.setattr(precisions, "_cpu_flags", lambda: frozenset({"avx2"}))
    assert precisions.supported("cpu") == ["fp32"]
    assert precisions.resolve("auto", "fp16", "cpu") == "fp32"
    with pytest.raises(UnsupportedError, match="none of avx512_bf16, amx_bf16"):
        precisions.resolve("bf16", "fp16", "cpu")
    monkeypatch.setattr(precisions, "_cpu_flags", lambda: frozenset({"amx_bf16"}))
    assert precisions.resolve("auto", "fp16", "cpu") == "bf16"
    assert precisions.resolve("auto", "fp32", "cpu") == "fp32"


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
