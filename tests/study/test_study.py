from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autoslim.errors import AutoslimError
from autoslim.recipe import Recipe
from autoslim.search import config, storage, study
from autoslim.search.costs import CostModel
from autoslim.search.trials import (
    MEASUREMENT_ATTR,
    has_recipe,
    is_interrupted,
    measurement_of,
    recipe_of,
    record,
)
from tests.study.conftest import FAKE, postgres_url, run_fake_study

pytestmark = pytest.mark.slow


def run(path: Path, **overrides) -> tuple[study.RunSummary, optuna.Study]:
    c = config.load(path, overrides={"study": overrides} if overrides else None)
    summary = study.run_study(c, objective=FAKE)
    return summary, optuna.load_study(study_name=c.study.name, storage=c.study.storage)


def counted(s: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in s.trials if study.counts_toward_total(t)]


def test_three_trials_complete_and_reload(study_file) -> None:
    path = study_file()
    summary, s = run(path)
    assert summary.trials_run == 3
    assert [t.state for t in s.trials] == [TrialState.COMPLETE] * 3
    base, int8, nf4 = s.trials
    assert base.user_attrs["is_base"] is True
    assert Recipe.from_params(base.params) == Recipe()  # params kept: see enqueue_starting_points
    assert int8.user_attrs["known"] == "bitsandbytes int8"
    assert nf4.user_attrs["known"] == "bitsandbytes 4-bit"
    assert s.metric_names == ["perplexity", "seconds", "joules"]
    assert s.directions == [optuna.study.StudyDirection.MINIMIZE] * 3
    attrs = s.user_attrs
    assert attrs["base_perplexity"] == base.values[0]
    assert attrs["max_ppl_increase"] == 0.2
    assert attrs["corpus_fingerprint"] == "fake-corpus"
    assert attrs["config"]["study"]["n_trials"] == 3
    assert attrs["seed"] == 0 and attrs["model"]
    for t in s.trials:
        json.dumps(t.user_attrs)  # JSON only
        assert Recipe.from_params(t.params) == recipe_of(t)
        assert t.user_attrs["recipe_summary"] == recipe_of(t).describe()  # full one not in hovers
        assert "recipe" not in t.user_attrs and "build" not in t.user_attrs
        measurement = t.system_attrs[MEASUREMENT_ATTR]
        assert measurement_of(t) == measurement
        assert t.values == [measurement[k] for k in s.metric_names]
        # key figures flat, for dashboards to sort and plot; the full record out of hovers
        assert t.user_attrs["size_bytes"] == measurement["size_bytes"]
        assert t.user_attrs["energy_source"] == "synthetic"
        assert "measurement" not in t.user_attrs
        (violation,) = t.user_attrs["constraint"]
        assert violation == pytest.approx(t.values[0] / base.values[0] - 1 - 0.2)
        # Optuna 5's key and the older list optuna-dashboard reads, one value
        assert t.system_attrs["constraints"] == [violation]
        assert t.system_attrs["constraints:perplexity_increase"] == violation
    assert s.best_trials


def test_resume_continues_without_repeating(study_file) -> None:
    path = study_file(search={"kd_steps": [0]}, study={"n_trials": 4})
    run(path)
    summary, s = run(path, n_trials=9)
    assert len(counted(s)) == 9
    assert summary.trials_run == 5
    recipes = [recipe_of(t) for t in counted(s)]
    assert len(set(recipes)) == len(recipes)
    assert [t.user_attrs.get("known") for t in s.trials[:4]] == [
        None,
        "bitsandbytes int8",
        "bitsandbytes 4-bit",
        "minitron",
    ]
    summary, s = run(path, n_trials=9)  # already done: nothing runs
    assert summary.trials_run == 0


def test_workers_are_recycled_so_memory_cannot_creep(study_file) -> None:
    path = study_file(search={"kd_steps": [0]}, study={"n_trials": 4, "recycle_every": 2})
    summary, s = run(path)
    pids = [t.user_attrs["worker"]["pid"] for t in s.trials]
    assert pids[0] == pids[1] != pids[2] == pids[3]  # a fresh process every 2 trials
    assert all(t.user_attrs["worker"]["rss_bytes"] > 0 for t in s.trials)
    # the peak of the whole trial, never below what the worker holds after it
    assert all(
        t.user_attrs["worker"]["peak_memory_bytes"] >= t.user_attrs["worker"]["rss_bytes"]
        for t in s.trials
    )
    assert len(summary.worker_setup_seconds) == 2


def fake_costs(**seconds: float) -> str:
    """A cost model in which every stage is free but the ones given (``kd_step_seconds``…)."""
    free = dict.fromkeys(
        ("copy_seconds", "eval_window_seconds", "kd_step_seconds", "workload_run_seconds"), 0.0
    )
    model = CostModel(
        **(free | seconds),
        eval_windows=4,
        workload_runs=2,
        early_abort_windows=2,
        cpu_wait_fraction=0.0,
    )
    return json.dumps(model.to_dict())


def test_a_trial_predicted_to_outlast_the_time_limit_is_not_started(
    study_file, monkeypatch
) -> None:
    # Each KD step is predicted at 100 s: a 20-step trial would run half an hour past a 60 s
    # limit, while a trial without distillation fits.
    monkeypatch.setenv("AUTOSLIM_FAKE_COSTS", fake_costs(kd_step_seconds=100.0))
    path = study_file(study={"n_trials": 8, "time_limit_seconds": 60})
    _, s = run(path)
    assert len(counted(s)) == 8
    assert not any(recipe_of(t).kd_steps for t in counted(s))
    skipped = [t for t in s.trials if recipe_of(t).kd_steps]
    assert skipped, "the sampler never proposed distillation"
    for t in skipped:
        assert t.state == TrialState.PRUNED and t.user_attrs["past_time_limit"]
        assert t.user_attrs["prune_reason"] == (
            "predicted to take ≈ 33 min, more than the time left of time_limit_seconds=60"
        )


def test_a_study_stops_when_its_time_left_fits_no_trial(study_file, monkeypatch) -> None:
    monkeypatch.setenv("AUTOSLIM_FAKE_COSTS", fake_costs(copy_seconds=80.0))
    path = study_file(study={"n_trials": 8, "time_limit_seconds": 60})
    summary, s = run(path)
    (base,) = counted(s)
    assert base.user_attrs["is_base"]  # the base always runs
    # the known recipes enqueued at start wait for a resume with a longer limit
    assert {t.state for t in s.trials[1:]} == {TrialState.WAITING}
    assert summary.stopped_because == (
        "the time left of time_limit_seconds=60 fits no further trial (the cheapest takes ≈ 80 s)"
    )


def test_a_timed_study_derives_the_kd_steps_its_file_leaves_out(study_file, monkeypatch) -> None:
    # KD steps predicted at 1 s: ten trials fit 600 s with 60 steps each, rounded down to 50.
    monkeypatch.setenv("AUTOSLIM_FAKE_COSTS", fake_costs(kd_step_seconds=1.0))
    path = study_file(search={"kd_steps": None}, study={"n_trials": 6, "time_limit_seconds": 600})
    _, s = run(path)
    assert s.user_attrs["derived_search"] == {"kd_steps": [0, 10, 50]}
    stored = config.StudyConfig.from_dict(s.user_attrs["config"])
    assert stored.search["kd_steps"].values() == [0, 10, 50]
    assert any(recipe_of(t).kd_steps for t in counted(s)), "the sampler never distilled"
    assert {recipe_of(t).kd_steps for t in s.trials} <= {0, 10, 50}
    # Resumed with another limit, the study keeps the space its trials were sampled from.
    _, s = run(path, n_trials=9, time_limit_seconds=60)
    assert len(counted(s)) == 9
    assert s.user_attrs["derived_search"] == {"kd_steps": [0, 10, 50]}
    assert {recipe_of(t).kd_steps for t in s.trials} <= {0, 10, 50}


def test_a_trial_over_the_memory_limit_is_stopped_and_the_study_goes_on(
    study_file, monkeypatch
) -> None:
    monkeypatch.setenv("AUTOSLIM_FAKE_FAULTS", "4:hog")  # the 4-bit trial holds 2 GB
    monkeypatch.setenv("AUTOSLIM_FAKE_HOG_BYTES", "2e9")
    path = study_file(model={"max_memory": "1.5GB"}, study={"n_trials": 5})
    started = time.monotonic()
    summary, s = run(path)
    assert time.monotonic() - started < 60  # stopped, not left to hold it for 10 s and answer
    assert len(counted(s)) == 5
    (over,) = [t for t in s.trials if t.state == TrialState.FAIL]
    assert recipe_of(over).bits == 4
    reason = over.user_attrs["fail_reason"]
    assert reason.startswith("MemoryLimit: the trial worker held ")
    assert "more than model.max_memory = 1.5 GB; the worker process was stopped" in reason
    assert {t.state for t in counted(s) if t.number != over.number} == {TrialState.COMPLETE}
    assert summary.states["FAIL"] == 1


def test_a_memory_limit_the_worker_cannot_start_under_stops_before_any_trial(
    study_file,
) -> None:
    path = study_file(model={"max_memory": "10MB"})
    with pytest.raises(AutoslimError, match="more than model.max_memory = 10 MB, before"):
        run(path)
    c = config.load(path)
    assert optuna.load_study(study_name=c.study.name, storage=c.study.storage).trials == []


def test_a_failing_trial_is_recorded_and_the_study_goes_on(study_file, monkeypatch) -> None:
    monkeypatch.setenv("AUTOSLIM_FAKE_FAULTS", "8:raise")
    summary, s = run(study_file(study={"n_trials": 6}))
    assert len(counted(s)) == 6
    failed = [t for t in s.trials if t.state == TrialState.FAIL]
    assert failed and failed[0].user_attrs["known"] == "bitsandbytes int8"
    assert failed[0].user_attrs["fail_reason"].startswith("RuntimeError: injected failure")
    assert summary.states["FAIL"] == len(failed)
    assert len(summary.worker_setup_seconds) == 1 + len(failed) - (
        s.trials[-1].state == TrialState.FAIL
    )


@pytest.mark.parametrize(
    ("faults", "reasons"),
    [
        (
            "8:segfault,4:hang",
            {8: "WorkerCrashed: the trial process died from SIGSEGV", 4: "TrialTimeout"},
        ),
        ("8:nan,4:oom", {8: "NonFiniteObjective: perplexity=nan", 4: "MemoryError"}),
    ],
)
def test_crashes_hangs_and_nan_never_stop_the_study(
    study_file, monkeypatch, faults, reasons
) -> None:
    monkeypatch.setenv("AUTOSLIM_FAKE_FAULTS", faults)
    path = study_file(
        study={"n_trials": 5, "trial_timeout_seconds": 4}, search={"bits": [16, 8, 4]}
    )
    _, s = run(path)
    assert len(counted(s)) == 5
    failed = {
        recipe_of(t).bits: t.user_attrs["fail_reason"]
        for t in s.trials
        if t.state == TrialState.FAIL
    }
    for bits, reason in reasons.items():
        assert failed[bits].startswith(reason), failed
    assert any(t.state == TrialState.COMPLETE for t in s.trials[3:])


def test_early_abort_records_a_pruned_trial(study_file) -> None:
    path = study_file(
        study={"n_trials": 4},
        search={
            "prune_ratio": {"low": 0.3, "high": 0.5, "step": 0.1},
            "drop_heads_per_layer": [2],
        },
        early_abort={"max_ppl_ratio": 1.5},
    )
    _, s = run(path)
    pruned = [t for t in s.trials if t.state == TrialState.PRUNED]
    assert pruned and "cheap stages" in pruned[0].user_attrs["prune_reason"]
    assert study.abort_savings(s).abandoned == len(pruned)


def test_changed_search_space_is_refused_on_resume(study_file) -> None:
    path = study_file()
    run(path, n_trials=1)
    changed = study_file(search={"kd_steps": [0, 50]})
    with pytest.raises(Exception, match="different search"):
        run(changed)


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    opened = storage.make_storage(url)  # picks the installed PostgreSQL driver
    return optuna.load_study(study_name=name, storage=opened).get_trials(deepcopy=False)


def test_kill_minus_9_mid_trial_then_resume(study_file) -> None:
    path = study_file(study={"n_trials": 6, "heartbeat_seconds": 1})
    c = config.load(path)
    env = {"AUTOSLIM_FAKE_SLEEP": "1.5"}
    proc = run_fake_study(path, env)
    deadline = time.monotonic() + 150
    victim = None
    while time.monotonic() < deadline:
        time.sleep(0.3)
        if not Path(c.study.storage.removeprefix("sqlite:///")).exists():
            continue
        try:
            trials = _trials(c.study.storage, c.study.name)
        except Exception:
            continue
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        running = [t for t in trials if t.state == TrialState.RUNNING and has_recipe(t)]
        if len(done) >= 2 and running:
            victim = running[0]
            break
    assert victim is not None, "the study never reached a running third trial"
    worker_pid = None
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
    worker_pid = int(children.stdout.split()[0]) if children.stdout.split() else None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    if worker_pid is not None:  # the orphaned worker exits by itself
        for _ in range(50):
            if not Path(f"/proc/{worker_pid}").exists():
                break
            time.sleep(0.1)
        assert not Path(f"/proc/{worker_pid}").exists()
    before = {
        t.number: t.values
        for t in _trials(c.study.storage, c.study.name)
        if t.state == TrialState.COMPLETE
    }

    resumed = run_fake_study(path, env)
    assert resumed.wait(120) == 0
    trials = _trials(c.study.storage, c.study.name)
    by_number = {t.number: t for t in trials}
    killed = by_number[victim.number]
    assert killed.state == TrialState.FAIL
    assert is_interrupted(killed) and not study.counts_toward_total(killed)
    assert record(killed, c.objectives).reason.startswith("Interrupted:")
    retries = [t for t in trials if storage.retried_trial_number(t) == victim.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert recipe_of(retries[0]) == recipe_of(killed)
    for number, values in before.items():
        assert by_number[number].values == values
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    complete = [recipe_of(t) for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == len(set(complete)) == 6


def test_workers_starting_together_on_an_empty_postgresql_database(tmp_path) -> None:
    url = postgres_url()
    if url is None:
        pytest.skip("PostgreSQL at 127.0.0.1:5432 is unreachable or psycopg2 is missing")
    import psycopg2

    database = f"autoslim_race_{os.getpid()}"
    admin = psycopg2.connect(url)
    admin.autocommit = True
    try:
        admin.cursor().execute(f"CREATE DATABASE {database}")
    except psycopg2.errors.InsufficientPrivilege:
        admin.close()
        pytest.skip(f"{url} may not create databases")
    fresh = url.rsplit("/", 1)[0] + "/" + database
    start_at = time.time() + 4  # every process opens the storage at the same moment
    code = (
        "import sys, time\nfrom autoslim.search.storage import make_storage\n"
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\nmake_storage(sys.argv[1])"
    )
    try:
        workers = [
            subprocess.Popen(
                [sys.executable, "-c", code, fresh, str(start_at)], stderr=subprocess.PIPE
            )
            for _ in range(4)
        ]
        errors = [w.communicate(timeout=120)[1].decode() for w in workers]
        assert [w.returncode for w in workers] == [0] * 4, "\n".join(errors)
        assert storage.make_storage(fresh).get_all_studies() == []
    finally:
        admin.cursor().execute(f"DROP DATABASE {database} WITH (FORCE)")
        admin.close()


def test_a_grid_study_ends_with_every_trial_told(study_file) -> None:
    # Optuna's GridSampler stops the study from inside tell() once its grid is used up, which
    # only works under Study.optimize; run_study asks and tells itself.
    path = study_file(
        study={"n_trials": 6, "sampler": "grid"},
        search={
            "drop_heads_per_layer": [0],
            "kd_steps": [0],
            "kd_temperature": [2.0],
            "prune_ratio": [0.0],
            "bits": [16, 8],
        },
    )
    _, s = run(path)
    assert not [t.number for t in s.trials if t.state == TrialState.RUNNING]
    assert {recipe_of(t) for t in s.trials if t.state == TrialState.COMPLETE} >= {
        Recipe(),
        Recipe(bits=8, quant_backend="bitsandbytes"),
    }
