"""The search-efficiency oracle replays a measured table the way a study would count trials."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from bench.search_efficiency import (
    TABLE,
    Oracle,
    base_recipe,
    bench_config,
    grid_recipes,
    key,
    load_table,
    replay,
)
from tests.study.fakes import synthetic_measurement


def synthetic_table() -> tuple[dict[str, Any], int]:
    config = bench_config()
    recipes = grid_recipes(config)
    rows = {}
    for recipe in recipes:
        m = synthetic_measurement(recipe)
        values = [m["perplexity"], m["seconds"], m["joules"]]
        rows[key(recipe)] = {"recipe": recipe.to_params(), "status": "done", "values": values}
    table = {"rows": rows, "base": key(base_recipe(config)), "max_ppl_increase": 0.25}
    return table, len(recipes)


def test_the_grid_sampler_reaches_the_whole_grids_hypervolume_after_every_recipe() -> None:
    table, n = synthetic_table()
    oracle = Oracle(table, grid_recipes(bench_config()))
    assert oracle.grid_hv > 0
    shares = replay(oracle, "grid", seed=0, n_trials=n, enqueue=False)
    assert len(shares) == n
    assert all(a <= b + 1e-12 for a, b in itertools.pairwise(shares))
    assert shares[-1] == pytest.approx(1.0)
    assert shares[0] < 1.0  # one recipe alone is not the grid's front


def test_an_abandoned_recipe_counts_as_a_trial_but_adds_no_hypervolume() -> None:
    table, n = synthetic_table()
    for row in table["rows"].values():
        if row["recipe"]["prune_ratio"] == 0.4:
            row["status"] = "abandoned"
    oracle = Oracle(table, grid_recipes(bench_config()))
    shares = replay(oracle, "grid", seed=0, n_trials=n, enqueue=False)
    assert len(shares) == n and shares[-1] == pytest.approx(1.0)


def test_the_measured_table_replays_after_knobs_were_added_to_the_space() -> None:
    # bench/data/search_grid.json was measured before kd_optimizer and kd_checkpointing
    # existed: its rows ran with their defaults, and still answer for today's recipes.
    oracle = Oracle(load_table(TABLE), grid_recipes(bench_config()))
    assert len(oracle.rows) == len(grid_recipes(bench_config()))
    assert oracle.grid_hv > 0
