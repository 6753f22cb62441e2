"""A trial a storage fault left RUNNING: its reason is kept outside the storage and written by
the next command on the study, never over a finished trial (the real disk-full case is
``tests/faults/test_faults.py::test_disk_full_mid_trial``)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autoslim.search import integrity, storage, study
from autoslim.search.trials import is_interrupted

X = {"x": optuna.distributions.FloatDistribution(0, 1)}
REASON = "storage 'sqlite:///s.db': the disk is full; free space on the disk that holds it"


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("AUTOSLIM_CACHE", str(folder))
    return folder


def _study(tmp_path: Path) -> tuple[str, optuna.storages.BaseStorage, optuna.Study]:
    url = f"sqlite:///{tmp_path / 's.db'}"
    opened = storage.make_storage(url, heartbeat_seconds=60)
    return url, opened, optuna.create_study(study_name="s", storage=opened)


def _ask(s: optuna.Study) -> optuna.Trial:
    with warnings.catch_warnings():  # a heartbeat storage outside Study.optimize
        warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
        return s.ask(X)


def test_the_next_command_fails_the_trial_with_the_kept_reason(tmp_path, cache) -> None:
    url, opened, s = _study(tmp_path)
    done = _ask(s)
    s.tell(done, 0.5)
    running = _ask(s)
    for number, trial in ((done.number, done), (running.number, running)):
        integrity.defer_failure(url, "s", number, trial.datetime_start, REASON)
    assert len(list(cache.rglob("*.json"))) == 2

    # the same file, however the URL spells it
    spelled = f"sqlite:///{tmp_path}/../{tmp_path.name}/s.db"
    assert study.fail_deferred(s, opened, spelled) == [running.number]
    trials = s.get_trials(deepcopy=False)
    assert trials[done.number].state == TrialState.COMPLETE
    assert trials[done.number].values == [0.5] and not trials[done.number].user_attrs
    failed = trials[running.number]
    assert failed.state == TrialState.FAIL and is_interrupted(failed)
    assert failed.user_attrs["fail_reason"] == f"Interrupted: {REASON}; recipe retried"
    (retry,) = trials[running.number + 1 :]
    assert storage.retried_trial_number(retry) == running.number
    assert not list(cache.rglob("*.json"))
    assert study.fail_deferred(s, opened, url) == []


def test_a_new_run_with_the_same_number_is_not_failed(tmp_path, cache) -> None:
    url, opened, s = _study(tmp_path)
    running = _ask(s)
    integrity.defer_failure(url, "s", running.number, None, REASON)  # another run's start
    assert study.fail_deferred(s, opened, url) == []
    assert s.trials[running.number].state == TrialState.RUNNING
    assert not list(cache.rglob("*.json"))


def test_other_studies_and_storages_keep_their_deferred_failures(tmp_path, cache) -> None:
    url, opened, s = _study(tmp_path)
    running = _ask(s)
    integrity.defer_failure(url, "other", running.number, running.datetime_start, REASON)
    integrity.defer_failure(
        f"sqlite:///{tmp_path / 't.db'}", "s", running.number, running.datetime_start, REASON
    )
    assert study.fail_deferred(s, opened, url) == []
    assert s.trials[running.number].state == TrialState.RUNNING
    assert len(list(cache.rglob("*.json"))) == 2


def test_a_deferred_failure_stores_no_credential(cache) -> None:
    url = "postgresql://bob:SECRET1@127.0.0.1:5432/test?sslpassword=SECRET2"
    path = integrity.defer_failure(url, "s", 3, None, REASON)
    assert path is not None
    text = path.read_text()
    assert "SECRET" not in text and "bob:***@127.0.0.1:5432" in text
    assert json.loads(text)["trial"] == 3
    (found,) = integrity.deferred_failures(url.replace("SECRET1", "other"), "s")
    assert found.trial == 3 and found.reason == REASON


def test_an_unwritable_cache_defers_nothing(tmp_path, monkeypatch) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("AUTOSLIM_CACHE", str(blocker))
    assert integrity.defer_failure(f"sqlite:///{tmp_path / 's.db'}", "s", 0, None, REASON) is None
