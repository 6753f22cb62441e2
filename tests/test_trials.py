from __future__ import annotations

import itertools
import warnings

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from autoslim.errors import ConfigError
from autoslim.recipe import Recipe
from autoslim.search import config
from autoslim.search.config import StudyConfig
from autoslim.search.trials import (
    MEASUREMENT_ATTR,
    best_records,
    hypervolume,
    objective_names,
    pareto_mask,
    read_trials,
    stored_config,
)
from autoslim.testing.studies import DEMO_TRIALS, make_study_file, measurement_dict


def load(url: str) -> optuna.Study:
    return optuna.load_study(study_name="demo", storage=url)


def test_records_carry_values_by_objective_name(tmp_path):
    study = load(make_study_file(tmp_path, objectives=["seconds", "perplexity"]))
    assert objective_names(study) == ("seconds", "perplexity")
    records = read_trials(study)
    assert [r.number for r in records] == list(range(len(DEMO_TRIALS)))
    int8 = records[1]
    assert int8.values == {"seconds": 0.9, "perplexity": 101.0}
    assert int8.perplexity == 101.0 and int8.recipe == Recipe(bits=8)
    assert int8.measurement["size_bytes"] == 5_000_000  # the full record, from its system attr
    assert int8.feasible and not int8.is_base and int8.recipe.describe() == "int8"
    assert records[0].is_base and records[0].recipe.describe() == "base model (fp32)"
    # trial 6 (perplexity 150) is over the 120 budget: its stored constraint says so once
    assert records[6].constraints == (pytest.approx(150 / 120 - 1),)
    assert not records[6].feasible
    failed, pruned, running = records[7:]
    assert failed.state == TrialState.FAIL and failed.reason.startswith("RuntimeError")
    assert pruned.reason == "perplexity 900 after pruning" and not pruned.feasible
    assert running.values == {} and running.measurement == {}
    d = int8.to_dict()
    assert d["values"] == {"seconds": 0.9, "perplexity": 101.0}
    assert Recipe.from_params(d["recipe"]) == Recipe(bits=8)
    # Optuna's best trials are feasible-only: 6 is not among them
    assert [r.number for r in best_records(study)] == [0, 1, 2, 3]


def test_older_layout_with_the_measurement_as_a_user_attr(tmp_path):
    study = optuna.create_study(directions=["minimize"] * 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["perplexity", "joules"])
    m = measurement_dict(DEMO_TRIALS[1], "f")
    study.add_trial(
        optuna.trial.create_trial(
            values=[m["perplexity"], m["joules"]],
            user_attrs={"measurement": m, "recipe": Recipe(bits=8).to_params()},
        )
    )
    (only,) = read_trials(study)
    assert only.measurement == m and only.values == {"perplexity": 101.0, "joules": 6.0}
    assert only.constraints == () and only.feasible  # unconstrained: feasible, as in Optuna
    assert MEASUREMENT_ATTR not in study.trials[0].system_attrs


def test_a_study_without_objective_names_is_refused():
    study = optuna.create_study(directions=["minimize"] * 2, study_name="bare")
    with pytest.raises(ConfigError, match="'bare' does not name its 2 objective"):
        read_trials(study)


def test_stored_config_round_trips(tmp_path):
    raw = {
        "study": {"name": "night", "n_trials": 0, "time_limit_seconds": 60, "sampler": "nsga2"},
        "objectives": {"names": ["joules", "perplexity"], "max_ppl_increase": 0.1},
        "search": {"bits": [16, 8], "prune_ratio": {"low": 0.0, "high": 0.4, "step": 0.1}},
        "workload": {"repeats": 2},
    }
    parsed = config.parse(raw, tmp_path / "night.toml", check_model=False)
    again = StudyConfig.from_dict(parsed.to_dict(), path=parsed.path)
    assert again == parsed
    assert again.search["drop_heads_per_layer"].range is None
    assert again.search["kd_steps"].values() == parsed.search["kd_steps"].values()

    study = load(make_study_file(tmp_path, objectives=["perplexity", "joules"]))
    assert stored_config(study).objectives == ("perplexity", "joules")
    with pytest.raises(ConfigError, match="not one `autoslim search` wrote"):
        StudyConfig.from_dict({"study": {"name": "x"}})


def brute_front(points):
    def dominates(a, b):
        return all(x <= y for x, y in zip(a, b, strict=True)) and a != b

    return [not any(dominates(q, p) for q in points) for p in points]


def test_pareto_mask_matches_the_definition():
    assert pareto_mask([]) == []
    assert pareto_mask([(1, 2), (2, 1), (2, 2), (1, 2)]) == [True, True, False, True]
    rng = np.random.default_rng(0)
    for n, k in itertools.product((1, 7, 40), (2, 3)):
        points = [tuple(p) for p in rng.integers(0, 5, size=(n, k)).tolist()]
        assert pareto_mask(points) == brute_front(points)


def test_hypervolume_by_hand():
    # (1,2) and (2,1) under (3,3): 2 + 2 - the 1 x 1 overlap
    assert hypervolume([(1, 2), (2, 1)], (3, 3)) == pytest.approx(3.0)
    assert hypervolume([(0, 0, 0)], (1, 2, 3)) == pytest.approx(6.0)
    # a dominated point and one beyond the reference add nothing
    assert hypervolume([(0, 0, 0), (0.5, 0.5, 0.5), (0, 0, 4)], (1, 2, 3)) == pytest.approx(6.0)
    # two boxes in 3D: 1x1x2 + 2x1x1 - their 1x1x1 overlap
    assert hypervolume([(1, 1, 0), (0, 1, 1)], (2, 2, 2)) == pytest.approx(3.0)
    assert hypervolume([], (1, 1)) == 0.0


def test_hypervolume_matches_monte_carlo():
    rng = np.random.default_rng(1)
    points = rng.random((12, 3))
    samples = rng.random((200_000, 3))
    covered = (points[None, :, :] <= samples[:, None, :]).all(axis=2).any(axis=1)
    assert hypervolume(points.tolist(), (1, 1, 1)) == pytest.approx(covered.mean(), abs=0.005)
