"""The product objective (build + measure) in a worker process, on a tiny model."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autoslim.measure import Measurement
from autoslim.search import config, study
from autoslim.search.costs import CostModel
from autoslim.search.trials import measurement_of, record
from tests.study.conftest import TINY_WORKLOAD, write_study

pytestmark = pytest.mark.slow


def test_three_real_trials_on_a_tiny_model(tmp_path: Path) -> None:
    from autoslim.testing import save_tiny_model

    model = save_tiny_model("qwen3", tmp_path / "tiny")
    path = write_study(
        tmp_path,
        {
            "study": {"n_trials": 3},
            "model": {"name": str(model)},
            "workload": TINY_WORKLOAD,
            "search": {
                "runtime": ["torch"],
                "kd_steps": [0],
                "precision": ["fp32"],
                "bits": [16, 8, 4],
                "quant_backend": ["bitsandbytes"],
            },
        },
        name="real",
    )
    c = config.load(path)
    seen: list[study.Progress] = []
    summary = study.run_study(c, progress=seen.append)
    assert summary.states == {"COMPLETE": 3}
    stages = {(p.message, p.stage.stage) for p in seen if p.stage is not None}
    # The worker's setup reports its stages as a trial does (a big model loads for minutes).
    assert ("starting the trial worker", "setup: cost model") in stages
    assert ("trial 1: int8", "measure: workload") in stages
    s = optuna.load_study(study_name="real", storage=f"sqlite:///{tmp_path / 'real.db'}")
    assert [t.user_attrs.get("known") for t in s.trials] == [
        None,
        "bitsandbytes int8",
        "bitsandbytes 4-bit",
    ]
    # The study file sets no timeout: each trial's comes from the costs measured at start.
    costs = CostModel.from_dict(s.user_attrs["cost_model"])
    assert costs.kd_step_seconds > 0 and costs.eval_windows == 4
    assert costs.early_abort_windows == 2  # the cheapest KD trial would not pay for more
    for t in s.trials:
        assert t.user_attrs["worker"]["timeout_seconds"] == costs.timeout_seconds(0)
        assert t.state == TrialState.COMPLETE
        m = Measurement.from_dict(measurement_of(t))
        assert t.values == [getattr(m, name) for name in s.metric_names]
        assert record(t, s.metric_names).build["stage_seconds"]
    assert s.user_attrs["base_perplexity"] == s.trials[0].values[0]
    assert len(s.user_attrs["corpus_fingerprint"]) == 16


def test_recovery_is_timed_at_start_and_heals_in_the_trials(tmp_path: Path) -> None:
    from autoslim.testing import save_tiny_model

    model = save_tiny_model("llama", tmp_path / "tiny", num_hidden_layers=4)
    path = write_study(
        tmp_path,
        {
            "study": {"n_trials": 3, "seed": 1},
            "model": {"name": str(model)},
            "workload": TINY_WORKLOAD,
            "search": {
                "kd_steps": [0],
                "precision": ["fp32"],
                "bits": [16],
                "drop_layers": [1],
                "recovery": ["bias", "block_kd"],
                "recovery_steps": [8],
            },
        },
        name="healed",
    )
    summary = study.run_study(config.load(path))
    assert summary.states.get("FAIL", 0) == 0
    s = optuna.load_study(study_name="healed", storage=f"sqlite:///{tmp_path / 'healed.db'}")
    costs = CostModel.from_dict(s.user_attrs["cost_model"])
    assert set(costs.recovery_seconds) == {"bias", "block_kd"}
    assert all(seconds > 0 for seconds in costs.recovery_seconds.values())
    # runtime left out: every runtime this machine runs, each conversion timed once at start
    engines = set(s.user_attrs["derived_search"]["runtime"]) - {"torch"}
    assert engines and set(costs.convert_seconds) == engines
    assert all(seconds > 0 for seconds in costs.convert_seconds.values())
    healed = [record(t, s.metric_names) for t in s.trials if t.state == TrialState.COMPLETE]
    healed = [r for r in healed if not r.is_base]
    assert healed
    for r in healed:
        assert r.build["info"]["recovery"] == r.recipe.recovery
        timeout = s.trials[r.number].user_attrs["worker"]["timeout_seconds"]
        assert timeout == costs.timeout_seconds(0, r.recipe.recovery)
