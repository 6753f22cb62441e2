from __future__ import annotations

import functools
import io
import json
import sys

import pytest

from autoslim.cli import main
from autoslim.recipe import Recipe
from autoslim.search import study
from tests.study.conftest import FAKE


def test_search_check_validates_without_creating_anything(study_file, capsys) -> None:
    path = study_file("checked")
    assert main(["search", str(path), "--check"]) == 0
    assert "valid" in capsys.readouterr().out
    assert not path.with_suffix(".db").exists()


def test_bad_study_file_exits_2_naming_the_key(study_file, capsys) -> None:
    path = study_file(search={"prune_ratio": {"low": 0.4, "high": 0.1}})
    assert main(["search", str(path)]) == 2
    err = capsys.readouterr().err
    assert "search.prune_ratio.high" in err and "swap" in err
    assert not path.with_suffix(".db").exists()


@pytest.mark.parametrize(
    ("workload", "needle"),
    [
        ({"protocol": {"window": 100000}}, "workload.protocol.window=100000"),
        ({"protocol": {"window": 64}, "decode_prompt_tokens": 200}, "decode_prompt_tokens=200"),
    ],
)
def test_workload_longer_than_the_model_context_exits_2_before_any_trial(
    study_file, capsys, workload, needle
) -> None:
    path = study_file("long", workload=workload)
    assert main(["search", str(path)]) == 2
    err = capsys.readouterr().err
    assert needle in err and "context of 128 tokens" in err
    assert len(err.strip().splitlines()) == 1
    assert not path.with_suffix(".db").exists()


def test_password_is_never_echoed(study_file, capsys) -> None:
    path = study_file(study={"storage": "postgresql://bob:s3cret@127.0.0.1/test"})
    assert main(["search", str(path), "--n-trials", "2"]) == 2
    err = capsys.readouterr().err
    assert "s3cret" not in err and "bob:***@" in err


@pytest.mark.slow
def test_search_output_and_json_name_the_objectives(study_file, capsys, monkeypatch) -> None:
    monkeypatch.setattr(study, "run_study", functools.partial(study.run_study, objective=FAKE))
    path = study_file("named", objectives={"names": ["seconds", "perplexity"]})
    assert main(["search", str(path)]) == 0
    out = capsys.readouterr().out
    assert "objectives seconds, perplexity" in out
    assert "#1 int8: perplexity 80.32, seconds " in out  # each trial's figures by name
    header = next(line for line in out.splitlines() if line.startswith("trial "))
    assert header.split()[:4] == ["trial", "recipe", "seconds", "perplexity"]

    assert main(["search", str(path), "--json"]) == 0  # resumed: nothing left to run
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema_version"] == 1 and doc["command"] == "search"
    assert doc["study"] == "named" and doc["objectives"] == ["seconds", "perplexity"]
    assert doc["run"]["trials_run"] == 0 and "reached n_trials" in doc["run"]["stopped_because"]
    assert doc["pareto"], "the three trials hold a front"
    for trial in doc["pareto"]:
        assert set(trial["values"]) == {"seconds", "perplexity"}
        assert isinstance(Recipe.from_params(trial["recipe"]), Recipe)
        assert trial["feasible"] and trial["state"] == "COMPLETE"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.slow
@pytest.mark.parametrize("tty", [False, True], ids=["piped", "terminal"])
def test_search_shows_progress_on_stderr_and_keeps_json_on_stdout(
    study_file, capsys, monkeypatch, tty
) -> None:
    """Trials of 1.5 s in a real worker process that reports nothing while it runs."""
    from autoslim.cli import _progress

    monkeypatch.setattr(study, "run_study", functools.partial(study.run_study, objective=FAKE))
    monkeypatch.setenv("AUTOSLIM_FAKE_SLEEP", "1.5")
    monkeypatch.setattr(_progress, "PLAIN_SECONDS", 0.5)  # the 30 s of a real run, scaled
    monkeypatch.setattr(_progress, "MININTERVAL", 0.0)
    terminal = Terminal()
    if tty:
        monkeypatch.setattr(sys, "stderr", terminal)
    path = study_file("shown", study={"n_trials": 2})
    assert main(["search", str(path), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["run"]["trials_run"] == 2  # stdout: the JSON alone
    err = terminal.getvalue() if tty else captured.err
    if tty:
        assert "study 0/2 trials |" in err and "study 1/2 trials |" in err
        assert "\r" in err and "trial 1: int8 | starting " in err
    else:
        assert "\r" not in err
        running = [line for line in err.splitlines() if line.endswith("trial 1: int8 | starting")]
        assert len(running) >= 2, err  # the trial's start, then again while it runs
        assert running[0].startswith("[  1/2] ")
    assert "| #1 int8: perplexity 80.32, seconds " in err  # the per-trial line
