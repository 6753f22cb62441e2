"""A real study on the reference model judged by tasks: a local lm-evaluation-harness task as
an objective and one as a constraint, a user function as an objective, hardware budgets
(size bounded before the build, drift before the tasks run), then report, and pick and export
tightening a task constraint by flag."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autoslim.errors import ConfigError
from autoslim.outputs.export import Selection, select_trial
from autoslim.outputs.pick import rank
from autoslim.outputs.report import get_summary_info, get_table_info
from autoslim.outputs.weights import PRESETS
from autoslim.search import config, study
from autoslim.search.budgets import task_key
from autoslim.search.trials import read_trials
from tests.study.conftest import TINY_WORKLOAD, write_study
from tests.tasks.test_config import LOCAL_TASKS

pytestmark = pytest.mark.slow

SCORE = """
import torch


def score(model, tokenizer):
    ids = tokenizer("def add(a, b):\\n    return a + b\\n", return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(ids.to(model.device), labels=ids.to(model.device)).loss
    return {"loss": float(loss)}
"""


def test_a_study_judged_by_tasks_and_budgets(tmp_path: Path) -> None:
    (tmp_path / "score.py").write_text(SCORE)
    local = {"harness": "pydoc_mc", "include_path": str(LOCAL_TASKS), "limit": 8}
    path = write_study(
        tmp_path,
        {
            "study": {"n_trials": 3, "trial_timeout_seconds": 600},
            "model": {"name": "reference", "dtype": "fp32"},
            "workload": TINY_WORKLOAD,
            "tasks": {
                "pydoc": {**local, "metric": "acc"},
                "pydoc_norm": {**local, "metric": "acc_norm", "max_relative_loss": 0.5},
                "mine": {"function": "score.py:score", "goal": "min"},
            },
            # the base (16 MB in fp32) misses the size budget but is measured in full; int8
            # meets both; half the MLP pruned away without distillation drifts too far
            "budgets": {"max_size_bytes": "12.5MB", "max_teacher_kl": 0.05},
            "objectives": {"names": ["perplexity", "seconds", "pydoc", "mine"]},
            "early_abort": {"enabled": False},
            "search": {
                "precision": ["fp32"],
                "bits": [16, 8],
                "quant_backend": ["torchao"],
                "drop_layers": [0, 1],
                "prune_ratio": [0.0, 0.5],
                "prune_importance": ["activation"],
                "drop_heads_per_layer": [0],
                "kd_steps": [0],
            },
        },
        name="tasks",
    )
    c = config.load(path)
    summary = study.run_study(c)
    assert summary.states == {"COMPLETE": 3}
    s = optuna.load_study(study_name="tasks", storage=c.study.storage)
    assert s.directions[2] == optuna.study.StudyDirection.MAXIMIZE
    assert s.user_attrs["constraint_names"] == [
        "perplexity_increase",
        "max_size_bytes",
        "max_teacher_kl",
        "task:pydoc_norm",
    ]
    records = {r.number: r for r in read_trials(s)}
    base, int8, pruned = records[0], records[1], records[2]
    assert base.is_base and int8.recipe.bits == 8 and pruned.recipe.prune_ratio == 0.5
    # every task ran on the base and on the trial that meets the cheaper budgets
    for r in (base, int8):
        assert set(r.tasks) == {"pydoc", "pydoc_norm", "mine"}
        harness = r.tasks["pydoc"]
        assert harness["metric"] == "acc" and harness["n"] == 8 and harness["version"] == "1.0"
        assert 0 <= harness["value"] <= 1 and harness["stderr"] > 0
        assert r.values["pydoc"] == harness["value"]
        assert r.values["mine"] == r.tasks["mine"]["value"] > 0
    assert not base.feasible  # 16 MB > 12.5 MB
    assert int8.feasible, int8.constraints
    # the pruned model drifted past max_teacher_kl: its tasks were never evaluated
    assert not pruned.tasks and "missed teacher_kl <= 0.05" in pruned.tasks_skipped
    assert pruned.values["pydoc"] == -math.inf and pruned.values["mine"] == math.inf
    assert not pruned.feasible
    choice = rank(s, PRESETS["balanced"])
    assert [cand.number for cand in choice.ranking] == [1]
    assert "met size_bytes <= 12.5 MB" in choice.reason
    assert choice.best.tasks["pydoc_norm"] == int8.tasks["pydoc_norm"]["value"]
    table = {row.number: row for row in get_table_info(s).rows}
    assert table[2].budgets.endswith("tasks skipped") and "pydoc_norm" in table[0].tasks
    savings = get_summary_info(s).task_savings
    assert savings is not None and (savings.skipped, savings.evaluated) == (1, 2)

    # pick and export tighten a task's constraint by flag, never loosen it
    norm = int8.tasks["pydoc_norm"]["value"]
    at_least = task_key("pydoc_norm", "at_least")
    assert rank(s, PRESETS["balanced"], tighten={at_least: norm}).best.number == 1
    with pytest.raises(ConfigError, match="no completed trial"):
        rank(s, PRESETS["balanced"], tighten={at_least: norm + 0.01})
    with pytest.raises(ConfigError, match=r"--task-at-least pydoc_norm=-1 is looser"):
        rank(s, PRESETS["balanced"], tighten={at_least: -1.0})
    at_most = {task_key("mine", "at_most"): int8.tasks["mine"]["value"] / 2}
    with pytest.raises(ConfigError, match="no completed trial"):
        select_trial(s, Selection(tighten=at_most))
    args = [sys.executable, "-m", "autoslim", "pick", c.study.storage, "--study-name", "tasks"]
    shown = subprocess.run([*args, "--task-at-least", f"pydoc_norm={norm}"], capture_output=True)
    assert shown.returncode == 0, shown.stderr
    assert f"met pydoc_norm >= {norm:.4g}" in shown.stdout.decode()
    for bad, needle in [
        ("nope=0.5", "--task-at-least nope=0.5: the study has no task 'nope' (its tasks: mine,"),
        ("pydoc_norm", "--task-at-least 'pydoc_norm': write NAME=VALUE"),
        ("pydoc_norm=-1", "--task-at-least pydoc_norm=-1 is looser than the study's"),
    ]:
        refused = subprocess.run([*args, "--task-at-least", bad], capture_output=True, text=True)
        assert refused.returncode == 2 and needle in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1

    # Resumed with one more trial: a layer dropped in fp32 is 13 MB, over the size budget,
    # and is given up before the build, from its parameter shapes.
    s.enqueue_trial({"drop_layers": 1, "bits": 16, "prune_ratio": 0.0})
    more = config.load(path, overrides={"study": {"n_trials": 4}})
    assert study.run_study(more).states == {"PRUNED": 1}
    last = read_trials(s)[-1]
    assert last.state == TrialState.PRUNED and last.recipe.drop_layers == 1
    assert last.reason.startswith("missed size_bytes <= 12.5 MB (13.")
    assert last.reason.endswith("from the parameter shapes, before the build")
