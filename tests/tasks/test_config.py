"""``[tasks.NAME]`` and ``[budgets]`` in study files: valid tables, and every bad input as a
one-line error naming the key, before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoslim.cli import main
from autoslim.errors import ConfigError
from autoslim.search import config

LOCAL_TASKS = Path(__file__).parents[2] / "studies" / "tasks" / "pydoc_mc"
PYDOC = {"harness": "pydoc_mc", "include_path": str(LOCAL_TASKS), "limit": 4}


def test_tasks_are_objectives_and_constraints(study_file, tmp_path: Path) -> None:
    (tmp_path / "score.py").write_text("def score(model, tokenizer):\n    return {'f1': 1.0}\n")
    path = study_file(
        tasks={
            "pydoc": {**PYDOC, "max_relative_loss": 0.1},
            "mine": {"function": "score.py:score", "goal": "min"},
        },
        objectives={"names": ["perplexity", "seconds", "mine"]},
        budgets={"max_size_bytes": "50MB", "min_top1_agreement": 0.5},
    )
    c = config.load(path)
    assert c.directions == ["minimize", "minimize", "minimize"]
    assert c.tasks["mine"].function == f"{(tmp_path / 'score.py').resolve()}:score"
    assert c.tasks["pydoc"].include_path == str(LOCAL_TASKS.resolve())
    assert c.budgets == {"max_size_bytes": 50e6, "min_top1_agreement": 0.5}
    again = config.StudyConfig.from_dict(c.to_dict())
    assert again.tasks == c.tasks and again.budgets == c.budgets
    maximised = study_file(
        "max", tasks={"pydoc": PYDOC}, objectives={"names": ["perplexity", "pydoc"]}
    )
    assert config.load(maximised).directions == ["minimize", "maximize"]


@pytest.mark.parametrize(
    ("tables", "needles"),
    [
        (
            {"tasks": {"t": {**PYDOC, "harness": "no_such_task", "at_least": 0.1}}},
            ["tasks.t.harness", "'no_such_task' is not a task of the task folder"],
        ),
        (
            {"tasks": {"t": {"function": "missing.py:score", "at_least": 0.1}}},
            ["tasks.t.function", "'missing.py' is not a file"],
        ),
        (
            {"tasks": {"t": {"harness": "x", "function": "f.py:g", "at_least": 0.1}}},
            ["tasks.t.harness", "exactly one"],
        ),
        ({"tasks": {"t": PYDOC}}, ["tasks.t", "neither an objective nor a constraint"]),
        ({"objectives": {"names": ["perplexity", "f1"]}}, ["objectives.names", "[tasks.f1]"]),
        ({"tasks": {"size_bytes": PYDOC}}, ["tasks.size_bytes", "a measured figure"]),
        (
            {"tasks": {"t": {**PYDOC, "at_least": 0.1, "max_relative_loss": 0.1}}},
            ["tasks.t.max_relative_loss", "give one of"],
        ),
        (
            {"tasks": {"t": {**PYDOC, "max_relative_loss": 1.5}}},
            ["tasks.t.max_relative_loss", "[0, 1)"],
        ),
        ({"budgets": {"max_size_bytes": "12XB"}}, ["budgets.max_size_bytes", "not a size"]),
        ({"budgets": {"max_flops": 3}}, ["budgets.max_flops", "unknown key", "max_size_bytes"]),
        ({"budgets": {"min_top1_agreement": 1.5}}, ["budgets.min_top1_agreement", "0 and 1"]),
        ({"budgets": {"max_teacher_kl": -0.1}}, ["budgets.max_teacher_kl", "-0.1: must be a"]),
        (
            {
                "budgets": {"min_decode_tokens_per_second": 10},
                "workload": {"decode_tokens": 0},
            },
            ["budgets.min_decode_tokens_per_second", "nothing measures it", "decode_tokens"],
        ),
    ],
)
def test_bad_tasks_and_budgets_name_the_key(study_file, tables, needles) -> None:
    with pytest.raises(ConfigError) as e:
        config.load(study_file(**tables))
    message = str(e.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message


def test_a_function_the_file_does_not_define(study_file, tmp_path: Path) -> None:
    (tmp_path / "score.py").write_text("def other(model, tokenizer):\n    return {}\n")
    path = study_file(tasks={"t": {"function": "score.py:score", "at_least": 0.1}})
    with pytest.raises(ConfigError, match=r"tasks\.t\.function: 'score.py' defines no 'score'"):
        config.load(path)


def test_task_data_that_cannot_be_reached(study_file, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "offline"
    folder.mkdir()
    (folder / "gone.yaml").write_text(
        "task: gone\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        "    test: gone.jsonl\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: '{{q}}'\ndoc_to_choice: '{{c}}'\ndoc_to_target: a\n"
    )
    path = study_file(
        tasks={"t": {"harness": "gone", "include_path": str(folder), "at_least": 0.1}}
    )
    assert main(["search", str(path), "--check"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "tasks.t: the data of 'gone' cannot be reached" in err
    assert "dataset_path: json" in err


def test_a_size_budget_no_recipe_can_meet_says_what_the_smallest_needs(study_file) -> None:
    from autoslim.search.budgets import parse_bytes

    path = study_file(budgets={"max_size_bytes": "1kB"})
    with pytest.raises(ConfigError) as e:
        config.load(path)
    message = str(e.value)
    assert "budgets.max_size_bytes: 1 kB is below what the smallest model" in message
    assert "4-bit weights" in message
    smallest = parse_bytes(message.split("(at least ")[1].split(":")[0].replace(" ", ""))
    # twice the bound is within reach (the space holds 4-bit recipes of the tiny model)
    assert config.load(study_file("ok", budgets={"max_size_bytes": 2 * smallest}))
