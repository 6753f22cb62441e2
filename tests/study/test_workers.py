"""Many workers on one study: real processes on the local PostgreSQL server and on a journal
file, the shared trial budget, and a worker killed mid-trial whose trial another one retries."""

from __future__ import annotations

import argparse
import os
import signal
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autoslim.cli import main
from autoslim.cli.worker import load_config
from autoslim.search import config, storage, study
from autoslim.search.trials import has_recipe, is_interrupted, recipe_of
from tests.study.conftest import FAKE, TINY_WORKLOAD, postgres_url, run_fake_study

pytestmark = pytest.mark.slow

# Many more recipes than trials: duplicates stay rare, the space never runs out.
SEARCH = {"kd_steps": [0, 10, 20, 30]}


def _url(kind: str, tmp_path: Path) -> str:
    if kind == "journal":
        return f"journal:///{tmp_path / 'workers.log'}"
    url = postgres_url()
    if url is None:
        pytest.skip("PostgreSQL at 127.0.0.1:5432 (database 'test') is unreachable")
    return url


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    opened = storage.make_storage(url)
    return optuna.load_study(study_name=name, storage=opened).get_trials(deepcopy=False)


def _delete(url: str, name: str) -> None:
    if url.startswith("postgresql"):
        optuna.delete_study(study_name=name, storage=storage.make_storage(url))


def _check_one_budget(
    trials: list[optuna.trial.FrozenTrial], n_trials: int, interrupted: int = 0
) -> None:
    """Every trial of the budget COMPLETE, each recipe once, nothing left running; the only
    other trials are duplicates, back-offs (over the budget, or put back behind the base),
    ``interrupted`` stale ones, none counted, and known recipes never asked for: two workers
    that start at once may both enqueue the starting points (Optuna's storages have no
    compare-and-set), and the copies left waiting once the budget is full are never run."""
    counted = [t for t in trials if study.counts_toward_total(t)]
    assert len(counted) == n_trials
    assert all(t.state == TrialState.COMPLETE for t in counted)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    recipes = [recipe_of(t) for t in counted]
    assert len(recipes) == len(set(recipes))
    others = [t for t in trials if not study.counts_toward_total(t)]
    assert sum(is_interrupted(t) for t in others) == interrupted
    assert all(
        "duplicate_of" in t.user_attrs
        or "over_budget" in t.user_attrs
        or study.WAITS_FOR_BASE in t.user_attrs
        or is_interrupted(t)
        or (t.state == TrialState.WAITING and "known" in t.user_attrs)
        for t in others
    )
    assert sum(bool(t.user_attrs.get("is_base")) for t in counted) == 1


@pytest.mark.parametrize("kind", ["postgresql", "journal"])
def test_four_workers_share_one_budget(study_file, tmp_path, kind) -> None:
    url = _url(kind, tmp_path)
    name = f"workers-{kind}-{uuid.uuid4().hex[:8]}"
    path = study_file(
        name=name, study={"n_trials": 10, "storage": url, "heartbeat_seconds": 2}, search=SEARCH
    )
    workers = [run_fake_study(path, {"AUTOSLIM_FAKE_SLEEP": "0.2"}, i) for i in range(4)]
    try:
        assert [w.wait(240) for w in workers] == [0] * 4
        trials = _trials(url, name)
        _check_one_budget(trials, 10)
        ids = {t.user_attrs["worker"]["worker_id"] for t in trials if "worker" in t.user_attrs}
        assert len(ids) >= 2 and ids <= {0, 1, 2, 3}
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
        _delete(url, name)


def test_a_worker_killed_mid_trial_is_retried_by_another(study_file, tmp_path) -> None:
    url = _url("postgresql", tmp_path)
    name = f"kill-{uuid.uuid4().hex[:8]}"
    path = study_file(
        name=name, study={"n_trials": 6, "storage": url, "heartbeat_seconds": 2}, search=SEARCH
    )
    workers = [run_fake_study(path, {"AUTOSLIM_FAKE_SLEEP": "1.5"}, i) for i in range(2)]
    try:
        victim = None
        deadline = time.monotonic() + 180
        while victim is None and time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                trials = _trials(url, name)
            except Exception:  # the first worker is still creating the study
                continue
            victim = next(
                (
                    t
                    for t in trials
                    if t.state == TrialState.RUNNING
                    and has_recipe(t)
                    and t.user_attrs.get("worker", {}).get("worker_id") == 0
                    and not t.user_attrs.get("is_base")
                ),
                None,
            )
        assert victim is not None, "worker 0 never started a trial"
        os.kill(workers[0].pid, signal.SIGKILL)
        workers[0].wait(10)
        before = {t.number: t.values for t in _trials(url, name) if t.state.is_finished()}
        assert workers[1].wait(240) == 0

        trials = _trials(url, name)
        by_number = {t.number: t for t in trials}
        killed = by_number[victim.number]
        assert killed.state == TrialState.FAIL and is_interrupted(killed)
        retries = [t for t in trials if storage.retried_trial_number(t) == victim.number]
        assert len(retries) == 1
        (retry,) = retries
        assert recipe_of(retry) == recipe_of(victim)
        assert retry.user_attrs["worker"]["worker_id"] == 1
        if retry.state == TrialState.PRUNED:
            # the sampler proposed the victim's recipe again before the victim went stale: the
            # retry is that trial's duplicate, so the recipe was still measured exactly once
            assert "duplicate_of" in retry.user_attrs, retry.user_attrs.get("prune_reason")
            original = by_number[retry.user_attrs["duplicate_of"]]
            assert original.state == TrialState.COMPLETE
            assert recipe_of(original) == recipe_of(victim)
        else:
            assert retry.state == TrialState.COMPLETE
        for number, values in before.items():
            assert by_number[number].values == values
        _check_one_budget(trials, 6, interrupted=1)
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
        _delete(url, name)


def test_journal_storage_has_no_optuna_heartbeat_so_the_study_beats_itself(tmp_path) -> None:
    """Why the journal needs autoslim's own beat: Optuna 5's JournalStorage is no heartbeat
    storage, so fail_stale_trials leaves a dead worker's trial RUNNING forever."""
    url = f"journal:///{tmp_path / 'j.log'}"
    opened = storage.make_storage(url, heartbeat_seconds=1)
    assert not storage.has_heartbeat(opened)
    s = optuna.create_study(study_name="j", storage=opened)
    dead = s.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    dead.set_user_attr("heartbeat", time.time() - 60)
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        optuna.storages.fail_stale_trials(s)
    assert s.trials[dead.number].state == TrialState.RUNNING

    assert study.recover_stale_trials(s, opened, heartbeat_seconds=1) == [dead.number]
    failed, retry = s.trials
    assert failed.state == TrialState.FAIL and is_interrupted(failed)
    assert retry.state == TrialState.WAITING and retry.params == failed.params
    assert storage.retried_trial_number(retry) == dead.number


def test_rdb_storages_get_optuna_heartbeat_only_when_asked(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    assert not storage.has_heartbeat(storage.make_storage(url))
    beating = storage.make_storage(url, heartbeat_seconds=2)
    assert isinstance(beating, optuna.storages.RDBStorage) and storage.has_heartbeat(beating)
    assert beating.get_heartbeat_interval() == 2
    assert beating.grace_period == storage.GRACE_BEATS * 2


def test_worker_joins_from_the_storage_url_with_the_stored_config(study_file, tmp_path) -> None:
    url = f"journal:///{tmp_path / 'joined.log'}"
    path = study_file(name="joined", study={"n_trials": 2, "storage": url})
    study.run_study(config.load(path), objective=FAKE)
    joined = load_config(argparse.Namespace(study=url, study_name=None))
    assert joined.study.storage == url and joined.study.name == "joined"
    assert joined.study.n_trials == 2 and joined.search == config.load(path).search


def test_search_check_names_the_extra_when_no_postgresql_driver(
    study_file, monkeypatch, capsys
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    missing = {"psycopg", "psycopg2"}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in missing else real(name, *a)
    )
    path = study_file(study={"storage": "postgresql://bob@127.0.0.1/test"})
    assert main(["search", str(path), "--check"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'autoslim[postgres]'" in err and "psycopg2" in err
    assert len(err.strip().splitlines()) == 1


def test_two_autoslim_workers_run_real_trials_on_a_journal_file(tmp_path) -> None:
    """The real command, the product objective, a tiny model: two `autoslim worker`
    processes started together share one journal study and its budget."""
    import subprocess
    import sys

    from autoslim.testing import save_tiny_model
    from tests.study.conftest import write_study

    model = save_tiny_model("qwen3", tmp_path / "tiny")
    url = f"journal:///{tmp_path / 'real.log'}"
    path = write_study(
        tmp_path,
        {
            "study": {"n_trials": 4, "storage": url, "heartbeat_seconds": 2},
            "model": {"name": str(model)},
            "workload": TINY_WORKLOAD,
            "search": {
                "kd_steps": [0],
                "precision": ["fp32"],
                "bits": [16, 8],
                "quant_backend": ["bitsandbytes", "torchao"],
                "drop_heads_per_layer": [0, 2],
            },
        },
        name="real",
    )
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "autoslim", "worker", str(path), "--worker-id", str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        outputs = [w.communicate(timeout=400) for w in workers]
        assert [w.returncode for w in workers] == [0, 0], outputs
        _check_one_budget(_trials(url, "real"), 4)
        assert all("stopped: reached n_trials=4" in out for out, _ in outputs), outputs
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
