"""Each hardware budget excludes the trial that misses it: as a stored Optuna constraint, in
the report, in pick, in export's choice, and when pick / export tighten it by flag."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from autoslim.errors import ConfigError
from autoslim.outputs.export import Selection, select_trial
from autoslim.outputs.pick import rank
from autoslim.outputs.report import get_pareto_info, get_summary_info, get_table_info
from autoslim.outputs.weights import PRESETS
from autoslim.recipe import Recipe
from autoslim.search.budgets import BY_KEY, parse_bytes
from autoslim.testing.studies import FakeTrial, base, make_study_file

# For each budget: a limit, a figure that meets it and one that misses it.
CASES: dict[str, tuple[float, float, float]] = {
    "max_size_bytes": (6e6, 5e6, 7e6),
    "max_peak_memory_bytes": (60e6, 50e6, 70e6),
    "min_prefill_tokens_per_second": (10_000.0, 20_000.0, 5_000.0),
    "min_decode_tokens_per_second": (200.0, 400.0, 100.0),
    "min_top1_agreement": (0.8, 0.9, 0.7),
    "max_teacher_kl": (0.1, 0.05, 0.2),
}


def test_every_declared_budget_has_a_case() -> None:
    assert set(CASES) == set(BY_KEY)


def _study(tmp_path: Path, key: str, budgets: dict[str, float] | None) -> tuple[Any, str]:
    """Base, a fast trial (2) that misses ``key``'s budget, a slower one (1) that meets it."""
    figure = BY_KEY[key].figure
    _, ok, bad = CASES[key]
    trials = (
        replace(base(100.0, 1.0, 10.0), figures={figure: ok}),
        FakeTrial(Recipe(bits=8), TrialState.COMPLETE, 101.0, 0.8, 8.0, figures={figure: ok}),
        FakeTrial(Recipe(bits=4), TrialState.COMPLETE, 102.0, 0.4, 4.0, figures={figure: bad}),
    )
    url = make_study_file(tmp_path, trials=trials, budgets=budgets)
    return optuna.load_study(study_name="demo", storage=url), url


@pytest.mark.parametrize("key", sorted(CASES))
def test_a_budget_of_the_study_excludes_the_trial_that_misses_it(tmp_path: Path, key: str):
    limit = CASES[key][0]
    study, _ = _study(tmp_path, key, {key: limit})
    trials = {t.number: t for t in study.trials}
    # an Optuna constraint: the sampler and Study.best_trials see it
    assert trials[2].system_attrs[f"constraints:{key}"] > 0
    assert trials[1].system_attrs[f"constraints:{key}"] <= 0
    assert 2 not in {t.number for t in study.best_trials}
    choice = rank(study, PRESETS["time"])
    assert choice.best.number == 1
    assert 2 not in [c.number for c in choice.ranking]
    assert "met " + choice.budget.limits[0].text in choice.best.budgets
    assert select_trial(study)[0].number == 1
    table = {r.number: r for r in get_table_info(study).rows}
    assert table[2].within_budget is False and "missed" in table[2].budgets
    assert table[1].within_budget is True
    summary = get_summary_info(study)
    assert summary.limits == ((choice.budget.limits[0].text, 1),)
    front = get_pareto_info(study, ("perplexity", "seconds"))
    assert [p.number for p in front.over_budget] == [2]


@pytest.mark.parametrize("key", sorted(CASES))
def test_a_budget_flag_tightens_pick_and_export(tmp_path: Path, key: str):
    study, _ = _study(tmp_path, key, None)
    assert rank(study, PRESETS["time"]).best.number == 2  # fastest, no budget
    tight = {key: CASES[key][0]}
    assert rank(study, PRESETS["time"], tighten=tight).best.number == 1
    assert select_trial(study, Selection(tighten=tight))[0].number == 1


def test_a_flag_may_not_loosen_the_study_budget(tmp_path: Path):
    study, _ = _study(tmp_path, "max_size_bytes", {"max_size_bytes": 6e6})
    with pytest.raises(ConfigError, match=r"--max-size 8 MB is looser than the study's"):
        rank(study, PRESETS["time"], tighten={"max_size_bytes": 8e6})


def test_pick_cli_tightens_by_flag_and_explains_the_budgets(tmp_path: Path):
    _, url = _study(tmp_path, "max_size_bytes", {"max_size_bytes": 6.5e6})
    args = [sys.executable, "-m", "autoslim", "pick", url, "--prefer", "time"]
    shown = subprocess.run([*args, "--max-size", "6MB"], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "trial 1: met size_bytes <= 6 MB (5 MB)" in shown.stdout
    as_json = subprocess.run([*args, "--max-size", "6MB", "--json"], capture_output=True)
    assert json.loads(as_json.stdout)["best_trial"] == 1
    looser = subprocess.run([*args, "--max-size", "9MB"], capture_output=True, text=True)
    assert looser.returncode == 2
    assert "--max-size 9 MB is looser" in looser.stderr
    bad = subprocess.run([*args, "--max-size", "6XB"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--max-size" in bad.stderr


def test_task_flags_name_a_task_of_the_study(tmp_path: Path):
    _, url = _study(tmp_path, "max_size_bytes", None)
    args = [sys.executable, "-m", "autoslim", "pick", url]
    for flag, value, needle in [
        ("--task-at-least", "pydoc=0.5", "the study has no task 'pydoc' (its tasks: none)"),
        ("--task-at-most", "pydoc=fast", "--task-at-most 'pydoc=fast': write NAME=VALUE"),
    ]:
        refused = subprocess.run([*args, flag, value], capture_output=True, text=True)
        assert refused.returncode == 2, refused.stderr
        assert needle in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_sizes_parse_with_units() -> None:
    assert parse_bytes("50MB") == 50e6
    assert parse_bytes("12 GiB") == 12 * 2**30
    assert parse_bytes(8000) == 8000
    with pytest.raises(ValueError, match="not a size"):
        parse_bytes("12 parsecs")
    assert BY_KEY["max_size_bytes"].flag == "--max-size"


def test_changed_budgets_are_refused_on_resume(study_file) -> None:
    from autoslim.search import config, study

    first = config.load(study_file(budgets={"max_size_bytes": "6MB"}), check_model=False)
    storage = study.make_storage(first.study.storage)
    opened, _ = study.open_study(first, storage)
    assert opened.user_attrs["constraint_names"] == ["perplexity_increase", "max_size_bytes"]
    looser = config.load(study_file(budgets={"max_size_bytes": "9MB"}), check_model=False)
    with pytest.raises(ConfigError, match="different budgets"):
        study.open_study(looser, storage)
