"""Budgets decided before the expensive stages: the stored size bounded from the parameter
shapes before the build (never above what the build stores), and the peak memory of a dry run
before distillation or measuring, on the reference model in the product objective."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from autoslim import progress
from autoslim.build import build
from autoslim.compress.size import size_bytes
from autoslim.errors import ConfigError
from autoslim.recipe import Recipe
from autoslim.search import config
from autoslim.search.budgets import SizeBound, hardware_limits
from autoslim.search.worker import BuildAndMeasure, TrialAbandoned
from tests.study.conftest import TINY_WORKLOAD, write_study

# Recipes of the tiny Qwen3 (intermediate 256): 0.4 of it rounds down to 128, not 153.6.
SHAPED = [
    Recipe(),
    Recipe(drop_layers=1),
    Recipe(prune_ratio=0.4),
    Recipe(drop_heads_per_layer=2),
    Recipe(drop_heads=((0, 1), (1, 0), (1, 2))),
    Recipe(bits=8, quant_backend="torchao"),
    Recipe(bits=4, prune_ratio=0.5, drop_layers=1),
]


@pytest.mark.parametrize("recipe", SHAPED, ids=[r.describe() for r in SHAPED])
def test_the_size_bound_never_exceeds_what_the_build_stores(
    recipe: Recipe, tiny_tok: Any, corpus: Any
) -> None:
    from autoslim.models import LoadedModel
    from autoslim.testing import tiny_model

    base = LoadedModel(tiny_model("qwen3"), tiny_tok, "qwen3", "")
    bound = SizeBound(base.model.config).of_recipe(recipe)
    stored = size_bytes(build(base, recipe, corpus=corpus).model)
    assert 0.5 * stored < bound <= stored
    if recipe.bits == 16 and not recipe.drop_heads and not recipe.drop_heads_per_layer:
        assert bound == stored  # whole layers and MLP channels removed: exact


@pytest.fixture(scope="module")
def objective(tmp_path_factory: pytest.TempPathFactory) -> BuildAndMeasure:
    """The product objective on the reference model (16 MB in fp32), set up once."""
    folder = tmp_path_factory.mktemp("early")
    path = write_study(
        folder,
        {
            "model": {"name": "reference", "dtype": "fp32"},
            "workload": TINY_WORKLOAD,
            "early_abort": {"enabled": False},
            "search": {"kd_steps": [0, 2], "bits": [16, 8], "quant_backend": ["torchao"]},
        },
    )
    return BuildAndMeasure(config.load(path))


def _stages(run: Callable[[], Any]) -> tuple[list[str], Any]:
    """The stages ``run`` reported, and what it returned or the TrialAbandoned it raised."""
    seen: list[str] = []
    progress.listen(lambda p: seen.append(p.stage))
    try:
        outcome = run()
    except TrialAbandoned as e:
        outcome = e
    finally:
        progress.listen(None)
    return seen, outcome


def test_a_size_over_budget_is_given_up_before_the_build(objective: BuildAndMeasure) -> None:
    limits = hardware_limits({"max_size_bytes": 12.5e6})
    stages, abandoned = _stages(lambda: objective(Recipe(drop_layers=1, kd_steps=2), limits))
    assert isinstance(abandoned, TrialAbandoned), abandoned
    assert abandoned.reason.startswith("missed size_bytes <= 12.5 MB (13.")
    assert abandoned.reason.endswith("from the parameter shapes, before the build")
    assert stages == []  # not even the layer drop ran


def test_a_dry_run_over_the_memory_budget_gives_up_before_distillation(
    objective: BuildAndMeasure,
) -> None:
    # above the smallest model's 16 MB of weights, far below the worker's resident set
    tight = hardware_limits({"max_peak_memory_bytes": 50e6})
    recipe = Recipe(kd_steps=2)
    stages, abandoned = _stages(lambda: objective(recipe, tight))
    assert isinstance(abandoned, TrialAbandoned), abandoned
    assert abandoned.reason.startswith("missed peak_memory_bytes <= 50 MB (")
    assert "in a dry run before distillation: not distilled or measured" in abandoned.reason
    assert "distill" not in stages and "measure" not in stages and stages[-1] == "dry run"
    dry_peak = abandoned.details["peak_memory_bytes"]
    assert dry_peak > 50e6
    # a generous budget: the same recipe is distilled and measured, and the workload's peak
    # on the same meter is at least the dry run's
    stages, payload = _stages(
        lambda: objective(recipe, hardware_limits({"max_peak_memory_bytes": 1e12}))
    )
    assert isinstance(payload, dict), payload
    assert "distill" in stages and "measure" in stages
    assert payload["measurement"]["peak_memory_bytes"] >= 0.95 * dry_peak


def test_a_quantized_recipe_is_dry_run_after_the_build(objective: BuildAndMeasure) -> None:
    limits = hardware_limits({"max_peak_memory_bytes": 50e6})
    stages, abandoned = _stages(lambda: objective(Recipe(bits=8, quant_backend="torchao"), limits))
    assert isinstance(abandoned, TrialAbandoned), abandoned
    assert abandoned.reason.endswith("in a dry run after the build: not measured")
    assert "quantize" in stages and "measure" not in stages


def test_a_memory_budget_below_the_smallest_weights_is_refused(study_file: Any) -> None:
    from autoslim.cli import main

    path: Path = study_file(budgets={"max_peak_memory_bytes": "1kB"})
    with pytest.raises(ConfigError) as e:
        config.load(path)
    message = str(e.value)
    assert "\n" not in message
    assert "budgets.max_peak_memory_bytes: 1 kB is below what the weights of the smallest" in (
        message
    )
    assert "(at least " in message and "4-bit weights" in message
    assert main(["search", str(path), "--check"]) == 2
