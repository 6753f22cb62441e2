"""The search: an Optuna multi-objective study over recipes, resumable and failure-proof.

``run_study(config)`` creates the study named in the study file, or resumes it (same name,
same storage → same study), then asks for recipes and tells results until the trial count
or the time limit is reached. What a stored study holds (other commands read it):

- study user_attrs: ``config`` (the validated study file), ``base_perplexity``,
  ``max_ppl_increase``, ``corpus_fingerprint``, ``model``, ``seed``, ``cost_model`` (the
  stage costs measured at the latest start, :class:`autoslim.search.costs.CostModel`); metric names
  set.
- trial user_attrs (JSON only): ``recipe_summary`` (the recipe in one line), every numeric
  figure of the measurement flat under its own name (``perplexity``, ``size_bytes``,
  ``peak_memory_bytes``, ``top1_agreement``, ``teacher_kl``, ``cpu_wait_fraction``,
  ``seconds_cv``…: sortable in dashboards) and ``energy_source``,
  ``constraint`` (``[ppl / base − 1 − max_ppl_increase]``, ≤ 0 feasible), ``fail_reason``
  on FAIL, ``prune_reason`` on PRUNED, ``is_base`` on the base-model trial, plus
  ``known`` (label of an enqueued known recipe), ``duplicate_of``, ``over_budget``,
  ``interrupted``, ``worker`` and (journal storage only) ``heartbeat`` bookkeeping.
- trial system attrs: ``autoslim:measurement`` (the full Measurement record),
  ``autoslim:recipe`` (every knob) and ``autoslim:build`` (stage seconds and build info), out
  of plot hovers and the dashboard's 1,024-character attr cut; the constraint as Optuna 5's
  ``constraints:perplexity_increase`` and as the older ``constraints`` list, the only one
  optuna-dashboard 0.21 reads. Read all of it back with :func:`autoslim.search.trials.read_trials`.

The base model and known recipes are enqueued first. A recipe already evaluated is not run
again (the duplicate is recorded as PRUNED). Any number of processes may run one study; a
trial whose process died goes stale (no heartbeat for ``GRACE_BEATS`` beats), is marked FAIL
and its recipe is enqueued again once with Optuna's retry callback, which records the trial it
retries (:func:`autoslim.search.storage.retried_trial_number`); see :mod:`autoslim.search.storage`.
A trial a storage fault interrupted (disk full, read-only, locked, server gone) ends FAIL with the
fault's one-line message as its reason; when the storage refuses even that write, the reason is
deferred (:func:`autoslim.search.integrity.defer_failure`) and the next search or worker on the
study writes it before the heartbeat would fail the trial as stale.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoslim.errors import AutoslimError, ConfigError
from autoslim.precisions import why_not
from autoslim.progress import TrialProgress
from autoslim.recipe import Recipe
from autoslim.search import integrity
from autoslim.search import space as search_space
from autoslim.search.budgets import constraint_names, limits_of
from autoslim.search.config import (
    FROM_COSTS,
    FROM_DEVICE,
    RunSection,
    StudyConfig,
    base_recipe,
    runtime_problem,
)
from autoslim.search.costs import UNMEASURED_TIMEOUT_SECONDS, CostModel, duration
from autoslim.search.storage import (
    GRACE_BEATS,
    has_heartbeat,
    is_stale,
    make_storage,
    retried_trial_number,
    retry_callback,
)
from autoslim.search.trials import (
    BUILD_ATTR,
    MEASUREMENT_ATTR,
    constraint_system_attrs,
    has_recipe,
    is_interrupted,
    measurement_user_attrs,
    recipe_attrs,
    recipe_of,
)
from autoslim.search.worker import DEFAULT_OBJECTIVE, TrialResult, Worker
from autoslim.urls import mask_url

logger = logging.getLogger(__name__)

# Consecutive duplicate proposals after which the space counts as exhausted.
MAX_DUPLICATES_IN_A_ROW = 30
# Loading a large base model in a fresh worker can take minutes.
WORKER_START_SECONDS = 900.0


@dataclass
class Progress:
    """What the CLI shows: a finished ``trial``, a ``notice`` (a line to keep: the cost model at
    start), or the running work (``message``: ``trial 3: int8``) at its latest ``stage``."""

    done: int
    total: int | None
    elapsed_seconds: float
    eta_seconds: float | None
    pareto_size: int
    trial: FrozenTrial | None = None
    message: str = ""
    notice: str = ""
    stage: TrialProgress | None = None


@dataclass
class RunSummary:
    """What one ``run_study`` call did."""

    study_name: str
    storage: str
    trials_run: int = 0
    states: dict[str, int] = field(default_factory=dict)
    wall_seconds: float = 0.0
    worker_setup_seconds: list[float] = field(default_factory=list)
    overhead_seconds: list[float] = field(default_factory=list)
    stopped_because: str = ""


# Optuna 5 stores constraints on the trial (Trial.set_constraint) and deprecates
# constraints_func; Optuna 4 only has constraints_func.
NATIVE_CONSTRAINTS = hasattr(optuna.Trial, "set_constraint")


def constraints(trial: FrozenTrial) -> list[float]:
    """The sampler's constraint: ``[perplexity / base − 1 − max_ppl_increase]``, ≤ 0 feasible."""
    return list(trial.user_attrs.get("constraint", [math.inf]))


def _constraints_func() -> Callable[[FrozenTrial], list[float]] | None:
    return None if NATIVE_CONSTRAINTS else constraints


def make_sampler(config: StudyConfig, seed: int) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():  # multivariate TPE is "experimental" since Optuna 2.2
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _sampler(config, seed)


def _sampler(config: StudyConfig, seed: int) -> optuna.samplers.BaseSampler:
    run = config.study
    if run.sampler == "tpe":
        return optuna.samplers.TPESampler(
            n_startup_trials=run.startup_trials,
            multivariate=True,
            group=True,
            constraints_func=_constraints_func(),
            seed=seed,
        )
    if run.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(
            population_size=run.population_size,
            constraints_func=_constraints_func(),
            seed=seed,
        )
    if run.sampler == "grid":
        return _GridSampler(search_space.grid_space(config.search), seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler, without its stop: ``GridSampler.after_trial`` calls
    ``Study.stop()`` once the grid is used up, which only works inside ``Study.optimize``; in
    ``run_study``'s ask-and-tell loop it raised inside ``tell`` and left the last trial
    RUNNING. Here the study ends as for any sampler: at ``n_trials``, or when the grid only
    re-proposes recipes already tried (the duplicate limit)."""

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        return None


def _comparable(config_dict: dict[str, Any]) -> dict[str, Any]:
    """The parts of a stored config that must not change when a study is resumed (the
    workload with its defaults filled in: seconds and joules are measured under it)."""
    from autoslim.protocol import Workload

    return {
        "model": config_dict["model"]["name"],
        "objectives": config_dict["objectives"],
        "search": config_dict["search"],
        "budgets": config_dict.get("budgets", {}),
        "tasks": config_dict.get("tasks", {}),
        "workload": Workload.from_dict(config_dict.get("workload", {})).to_dict(),
    }


def _differences(stored: Any, current: Any, key: str) -> list[str]:
    """``key.sub (old → new)`` for each leaf that differs between two config parts."""
    if isinstance(stored, dict) and isinstance(current, dict):
        return [
            line
            for k in sorted(set(stored) | set(current), key=str)
            for line in _differences(stored.get(k), current.get(k), f"{key}.{k}")
        ]
    return [] if stored == current else [f"{key} ({stored!r} → {current!r})"]


def open_study(
    config: StudyConfig, storage: optuna.storages.BaseStorage
) -> tuple[optuna.Study, StudyConfig]:
    """Create the study, or load it and check it was made from a compatible study file; the
    config with what the study derived earlier (``derived_search``) in place."""
    name = config.study.name
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        directions=config.directions,
        load_if_exists=True,
    )
    derived = dict(study.user_attrs.get("derived_search", {}))
    for knob in FROM_DEVICE:  # derived by the worker that creates the study, kept by the rest
        if knob in config.derive and knob not in derived:
            derived[knob] = config.search[knob].values()
    config = config.with_derived(derived)
    current = config.to_dict()
    stored = study.user_attrs.get("config")
    if stored is not None and _comparable(stored) != _comparable(current):
        old, new = _comparable(stored), _comparable(current)
        changed = [k for k, v in new.items() if old[k] != v]
        details = [d for k in changed for d in _differences(old[k], new[k], k)]
        raise ConfigError(
            f"{config.path}: study {name!r} in {mask_url(config.study.storage)} was created "
            f"with a different {'; '.join(details[:3]) or ' and '.join(changed)}; results "
            "would not be comparable. Set a new [study].name, or restore the old values"
        )
    if len(study.directions) != len(config.objectives):
        raise ConfigError(
            f"{config.path}: study {name!r} has {len(study.directions)} objectives, the file "
            f"{len(config.objectives)}; set a new [study].name"
        )
    _check_device(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(config.objectives))
    precision = base_recipe(config).precision
    if study.user_attrs.get("base_precision", precision) != precision:
        raise ConfigError(
            f"{config.path}: study {name!r} measured its base model in "
            f"{study.user_attrs['base_precision']}, this machine would use {precision} "
            "(model.dtype / device differ); set model.dtype explicitly or a new [study].name"
        )
    study.set_user_attr("base_precision", precision)
    study.set_user_attr("derived_search", derived)
    study.set_user_attr("config", current)
    study.set_user_attr("max_ppl_increase", config.max_ppl_increase)
    study.set_user_attr("constraint_names", constraint_names(config))
    study.set_user_attr("model", config.model.name)
    from autoslim import models

    study.set_user_attr("model_source", models.source(config.model.name))
    study.set_user_attr("seed", config.study.seed)
    return study, config


def _check_device(config: StudyConfig) -> None:
    """Refuse a worker that cannot measure the study's space as the study defines it (the
    space another machine derived, or its file lists): a runtime not installed here, or a
    precision this device would only emulate (its trials would time the emulation)."""
    device = config.model.device
    problems = [
        (knob, value, reason)
        for knob, why in (("runtime", runtime_problem), ("precision", why_not))
        for value in config.search[knob].values()
        if (reason := why(value, device)) is not None
    ]
    if problems:
        knob, value, reason = problems[0]
        origin = (
            "derived from the device of the worker that created it"
            if knob in config.derive
            else "from its study file"
        )
        raise ConfigError(
            f"{config.path}: study {config.study.name!r} searches {knob} {value!r} "
            f"(search.{knob} {origin}), but on {device}: {reason}; run this worker on a "
            "machine that has it, or set a new [study].name"
        )


def pending_cost_derivation(study: optuna.Study, config: StudyConfig) -> tuple[str, ...]:
    """The knobs the study file left to the cost model that the study has not derived yet."""
    derived = study.user_attrs.get("derived_search", {})
    return tuple(k for k in config.derive if k in FROM_COSTS and k not in derived)


def derive_search(study: optuna.Study, config: StudyConfig, costs: CostModel) -> StudyConfig:
    """Derive the knobs the study file left to the cost model (``config.derive``), once per
    study: stored in ``derived_search`` and in the ``config`` attr, so a resumed study and
    every other worker search the same space."""
    derived = dict(study.user_attrs.get("derived_search", {}))
    if not pending_cost_derivation(study, config):
        return config.with_derived(derived)
    assert config.study.time_limit_seconds is not None  # FROM_COSTS needs one (config.parse)
    derived["kd_steps"] = costs.derived_kd_steps(config.study.time_limit_seconds)
    config = config.with_derived(derived)
    study.set_user_attr("derived_search", derived)
    study.set_user_attr("config", config.to_dict())
    return config


def counts_toward_total(trial: FrozenTrial) -> bool:
    """Finished trials that evaluated a recipe (not duplicates, not over the budget, not
    interrupted ones, not ones put back behind the base-model trial, not a failed base-model
    trial: it is run again, and nothing is compared without it)."""
    attrs = trial.user_attrs
    return (
        trial.state.is_finished()
        and "duplicate_of" not in attrs
        and "over_budget" not in attrs
        and "past_time_limit" not in attrs
        and WAITS_FOR_BASE not in attrs
        and not (attrs.get("is_base") and trial.state != TrialState.COMPLETE)
        and not is_interrupted(trial)
    )


# The user attr of a trial taken while the base-model trial was still queued behind it.
WAITS_FOR_BASE = "waits_for_base"


def _base_queued_behind(study: optuna.Study, trials: list[FrozenTrial]) -> bool:
    """Whether the base model is unknown, no worker is measuring it and its trial waits in the
    queue (after a base trial that failed, the resumed study enqueues it again behind the
    recipes still waiting)."""
    attrs = study.user_attrs
    if "base_figures" in attrs or "base_perplexity" in attrs:
        return False
    bases = {t.state for t in trials if t.user_attrs.get("is_base")}
    return TrialState.WAITING in bases and TrialState.RUNNING not in bases


def _put_back(study: optuna.Study, trial: optuna.Trial) -> None:
    """Record ``trial`` as put back behind the base-model trial (PRUNED, not counted) and
    enqueue its recipe again, after the base."""
    trial.set_user_attr(WAITS_FOR_BASE, True)
    trial.set_user_attr(
        "prune_reason", "the base-model trial was queued behind it; its recipe is queued again"
    )
    study.tell(trial, state=TrialState.PRUNED)
    kept = {k: v for k, v in trial.user_attrs.items() if k in RETRY_KEEPS}
    study.enqueue_trial(trial.params, user_attrs=kept)


def recover_stale_trials(
    study: optuna.Study, storage: optuna.storages.BaseStorage, heartbeat_seconds: int
) -> list[int]:
    """Fail the RUNNING trials whose worker went silent (killed, crashed or lost) and enqueue
    each one's recipe again, once (see :mod:`autoslim.search.storage`); returns their numbers."""
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if not running:
        return []
    if has_heartbeat(storage):
        with warnings.catch_warnings():  # "experimental" since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    else:
        _fail_silent_trials(study, heartbeat_seconds)
    return [
        t.number
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        if t.number in running and is_interrupted(t)
    ]


def _fail_silent_trials(study: optuna.Study, heartbeat_seconds: int) -> None:
    """What :func:`optuna.storages.fail_stale_trials` does, for a storage without Optuna's
    heartbeat: the beat is the trial's ``heartbeat`` user attr."""
    now = time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_stale(trial, heartbeat_seconds, now):
            continue
        try:
            study.tell(trial.number, state=TrialState.FAIL)
        except (RuntimeError, ValueError):  # another worker got there first
            continue
        _retry(study, study.get_trials(deepcopy=False)[trial.number])


# What a retry keeps of the trial it retries (the rest is about the run that stopped).
RETRY_KEEPS = ("is_base", "known")


def _retry(study: optuna.Study, trial: FrozenTrial) -> None:
    """Enqueue a stopped trial's recipe again with Optuna's retry callback (it records the
    trial it retries, see :func:`autoslim.search.storage.retried_trial_number`), at most once."""
    kept = copy.deepcopy(trial)
    kept.user_attrs = {k: v for k, v in trial.user_attrs.items() if k in RETRY_KEEPS}
    retry_callback()(study, kept)
    logger.warning("trial %d stopped mid-trial; its recipe is enqueued again", trial.number)


def _stop(
    study: optuna.Study, storage: optuna.storages.BaseStorage, number: int, why: str
) -> None:
    """Ctrl-C or a storage fault: the running trial ``number`` ends FAIL (interrupted,
    ``why``) and its recipe is retried later."""
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), number
    )
    try:
        storage.set_trial_user_attr(trial_id, "fail_reason", f"Interrupted: {why}; recipe retried")
        storage.set_trial_user_attr(trial_id, "interrupted", True)
        study.tell(number, state=TrialState.FAIL)
    except (RuntimeError, ValueError):  # it finished meanwhile
        return
    _retry(study, study.get_trials(deepcopy=False)[number])


# How long a trial a storage fault interrupted is retried to be failed before its reason is
# deferred (a lock may clear in this time; a full disk or a stopped server will not).
STOP_RETRY_SECONDS = 3.0


def _stop_after_fault(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    url: str,
    trial: optuna.Trial,
    fault: AutoslimError,
) -> None:
    """Fail the trial a storage fault interrupted, with the fault as its reason: now, or after
    a few retries, else through a deferred failure the next command on the study writes
    (:func:`fail_deferred`)."""
    deadline = time.monotonic() + STOP_RETRY_SECONDS
    while True:
        try:
            _stop(study, storage, trial.number, str(fault))
            return
        except Exception as again:
            if time.monotonic() >= deadline:
                logger.info(
                    "trial %d not marked FAIL, the storage still refuses: %s", trial.number, again
                )
                break
        time.sleep(1.0)
    kept = integrity.defer_failure(
        url, study.study_name, trial.number, trial.datetime_start, str(fault)
    )
    if kept is not None:
        logger.warning(
            "trial %d stays RUNNING in the storage until it accepts writes again; the next "
            "`autoslim search` or `worker` on the study fails it with this reason (kept in %s)",
            trial.number, kept,
        )  # fmt: skip


def fail_deferred(
    study: optuna.Study, storage: optuna.storages.BaseStorage, url: str
) -> list[int]:
    """Fail the trials a storage fault left RUNNING with the reason kept for them
    (:func:`autoslim.search.integrity.defer_failure`), before the heartbeat would call them stale;
    returns their numbers. A trial that has finished meanwhile (failed as stale by another
    machine, or a trial number reused by a new study) is left as it is."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    failed = []
    for deferred in integrity.deferred_failures(url, study.study_name):
        trial = trials.get(deferred.trial)
        started = trial.datetime_start.isoformat() if trial and trial.datetime_start else ""
        if trial is not None and trial.state == TrialState.RUNNING and started == deferred.started:
            _stop(study, storage, trial.number, deferred.reason)
            failed.append(trial.number)
            logger.info(
                "trial %d failed with its deferred reason: %s", trial.number, deferred.reason
            )
        else:
            logger.info(
                "deferred failure of trial %d dropped: the trial is no longer that run",
                deferred.trial,
            )
        deferred.discard()
    return failed


def enqueue_starting_points(study: optuna.Study, config: StudyConfig) -> list[str]:
    """Enqueue the base model and the known recipes that the study does not hold yet, as
    many as the trial count leaves room for.

    A base trial that failed is enqueued again (nothing works without it); a known recipe
    that was tried in any way is not.
    """
    trials = study.get_trials(deepcopy=False)
    room = math.inf
    if config.study.n_trials is not None:
        pending = (TrialState.RUNNING, TrialState.WAITING)
        room = config.study.n_trials - sum(
            counts_toward_total(t) or t.state in pending for t in trials
        )
    live = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
    added = []
    if not any(t.user_attrs.get("is_base") and t.state in live for t in trials):
        # With its params recorded, the base trial stays inside the samplers' intersection
        # search space (a trial without params would empty it: NSGA-II and multivariate TPE
        # would fall back to independent sampling).
        identity = base_recipe(config)
        params = (
            search_space.params_of(identity, config.search)
            if search_space.contains(config.search, identity)
            else {}
        )
        study.enqueue_trial(params, user_attrs={"is_base": True})
        added.append("base")
        room -= 1
    present = {recipe_of(t) for t in trials if not t.user_attrs.get("is_base")}
    for label, recipe in search_space.known_recipes(config.search, base_recipe(config)):
        if room <= 0:
            break
        if recipe not in present:
            params = search_space.params_of(recipe, config.search)
            study.enqueue_trial(params, user_attrs={"known": label})
            added.append(label)
            room -= 1
    return added


def recipe_for(trial: optuna.Trial, config: StudyConfig) -> Recipe:
    """The recipe a new trial evaluates: the base model for the base trial, else sampled."""
    base = base_recipe(config)
    if trial.user_attrs.get("is_base") and not search_space.contains(config.search, base):
        return base
    return search_space.suggest_recipe(trial, config.search)


class _Heartbeat:
    """Beats for a running trial every ``seconds``: the trial's ``heartbeat`` user attr (what
    a journal storage's recovery and the report read), and Optuna's heartbeat where the
    storage has one (see :mod:`autoslim.search.storage`)."""

    def __init__(
        self, storage: optuna.storages.BaseStorage, trial: optuna.Trial, seconds: int
    ) -> None:
        self.trial = trial
        self.seconds = seconds
        self.optuna_beat: Callable[[], None] | None = None
        if isinstance(storage, optuna.storages.RDBStorage) and has_heartbeat(storage):
            trial_id = _trial_id(trial)
            self.optuna_beat = lambda: storage.record_heartbeat(trial_id)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def record(self) -> None:
        if self.optuna_beat is not None:
            self.optuna_beat()
        self.trial.set_user_attr("heartbeat", time.time())

    def _beat(self) -> None:
        while not self.stop.wait(self.seconds):
            try:
                self.record()
            except optuna.exceptions.UpdateFinishedTrialError:  # failed as stale meanwhile
                return
            except Exception as e:  # a storage hiccup: the next beat may get through
                logger.info("trial %d: heartbeat not recorded (%s)", self.trial.number, e)

    def __enter__(self) -> _Heartbeat:
        self.record()  # a trial that never beat is never found stale
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def pareto_size(study: optuna.Study) -> int:
    return len(study.best_trials)


def base_figures(figures: dict[str, Any]) -> dict[str, float]:
    """The base model's numeric figures (measurement and tasks), as relative limits need."""
    return {
        k: float(v)
        for k, v in figures.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def _wait_for_base(study: optuna.Study, timeout: float) -> dict[str, Any] | None:
    """The base model's figures, once its trial is done (None after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        attrs = study.user_attrs
        base = attrs.get("base_figures")
        if base is None and "base_perplexity" in attrs:  # a study made before base_figures
            base = {"perplexity": attrs["base_perplexity"]}
        if base is not None or time.monotonic() > deadline:
            return None if base is None else dict(base)
        time.sleep(2.0)


def _record(
    study: optuna.Study,
    trial: optuna.Trial,
    result: TrialResult,
    config: StudyConfig,
    is_base: bool,
    timeout: float,
) -> TrialState:
    """Store a worker's result on the trial and tell the study; returns the final state."""
    trial.set_user_attr("worker", {**trial.user_attrs.get("worker", {}), **result.worker})
    if result.status == "abandoned":
        trial.set_user_attr("prune_reason", result.reason)
        _set_system_attrs(
            study, trial, {BUILD_ATTR: {"stage_seconds": {}, "info": result.payload}}
        )
        study.tell(trial, state=TrialState.PRUNED)
        return TrialState.PRUNED
    if result.status != "done":
        trial.set_user_attr("fail_reason", result.reason)
        study.tell(trial, state=TrialState.FAIL)
        return TrialState.FAIL
    measurement = result.payload["measurement"]
    _set_system_attrs(study, trial, {MEASUREMENT_ATTR: measurement})
    for key, value in measurement_user_attrs(measurement).items():
        trial.set_user_attr(key, value)
    _set_system_attrs(study, trial, {BUILD_ATTR: result.payload.get("build", {})})
    tasks = result.payload.get("tasks", {})
    skipped = result.payload.get("tasks_skipped")
    if tasks:
        trial.set_user_attr("tasks", tasks)
    if skipped:
        trial.set_user_attr("tasks_skipped", skipped)
    figures = {**measurement, **{name: r["value"] for name, r in tasks.items()}}
    for name in tasks:
        trial.set_user_attr(name, figures[name])
    worst = {"minimize": math.inf, "maximize": -math.inf}
    try:
        # A task skipped because a cheaper budget was missed scores the worst value: the
        # trial is infeasible anyway, so the samplers compare it by its violations only.
        values = [
            float(figures[name]) if name in figures or not skipped else worst[direction]
            for name, direction in zip(config.objectives, config.directions, strict=True)
        ]
    except (KeyError, TypeError, ValueError) as e:
        trial.set_user_attr("fail_reason", f"BadMeasurement: {type(e).__name__}: {e}")
        study.tell(trial, state=TrialState.FAIL)
        return TrialState.FAIL
    bad = [
        f"{n}={v}"
        for n, v in zip(config.objectives, values, strict=True)
        if not math.isfinite(v) and not (skipped and n in config.tasks)
    ]
    if bad:
        trial.set_user_attr("fail_reason", f"NonFiniteObjective: {', '.join(bad)}")
        study.tell(trial, state=TrialState.FAIL)
        return TrialState.FAIL
    if is_base:
        study.set_user_attr("base_perplexity", float(measurement["perplexity"]))
        study.set_user_attr("base_figures", base_figures(figures))
        base: dict[str, Any] | None = figures
    else:
        base = _wait_for_base(study, timeout)
    if base is None:
        trial.set_user_attr(
            "fail_reason", "BaseModelUnknown: the base-model trial has not completed"
        )
        study.tell(trial, state=TrialState.FAIL)
        return TrialState.FAIL
    violations = {limit.name: limit.violation(figures) for limit in limits_of(config, base)}
    trial.set_user_attr("constraint", list(violations.values()))
    attrs = constraint_system_attrs(violations)
    if NATIVE_CONSTRAINTS:
        for name, violation in violations.items():
            trial.set_constraint(name, violation)
            attrs.pop(f"constraints:{name}")
    _set_system_attrs(study, trial, attrs)
    study.tell(trial, values)
    return TrialState.COMPLETE


def _trial_id(trial: optuna.Trial) -> int:
    """The storage's id of a trial, through the storage's public API."""
    storage = trial.storage
    study_id = storage.get_study_id_from_name(trial.study.study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)


def _set_system_attrs(study: optuna.Study, trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    """Trial system attrs through the storage's public API (Trial has no setter for them)."""
    storage = trial.storage
    trial_id = _trial_id(trial)
    for key, value in attrs.items():
        storage.set_trial_system_attr(trial_id, key, value)


def run_study(
    config: StudyConfig,
    *,
    objective: str = DEFAULT_OBJECTIVE,
    progress: Callable[[Progress], None] | None = None,
    worker_id: int = 0,
) -> RunSummary:
    """Create or resume the study and run trials until the count or the time limit.

    Any number of processes may run it on one study (``autoslim worker``), each with its own
    ``worker_id``: the sampler seed is the study seed plus the trials stored plus a step per
    worker id, and ``n_trials`` is the budget of the whole study, not of each process.
    """
    return _StudyRun(config, objective, progress, worker_id).run()


class _StudyRun:
    """One process's run of a study: its loop (:meth:`run`), why it stops
    (:meth:`stop_reason`), the trial worker it starts (:meth:`ensure_worker`), the checks a
    trial passes before it is built (:meth:`skipped`) and the progress it reports."""

    def __init__(
        self,
        config: StudyConfig,
        objective: str,
        progress: Callable[[Progress], None] | None,
        worker_id: int,
    ) -> None:
        self.run_section = run = config.study
        self.started = time.monotonic()
        self.storage = make_storage(run.storage, heartbeat_seconds=run.heartbeat_seconds)
        self.study, self.config = open_study(config, self.storage)
        self.summary = RunSummary(study_name=run.name, storage=mask_url(run.storage))
        self.recovered = fail_deferred(self.study, self.storage, run.storage)
        self.recovered += recover_stale_trials(self.study, self.storage, run.heartbeat_seconds)
        self.progress = progress
        self.worker_id = worker_id
        self.worker = Worker(
            self.config,
            objective,
            start_timeout=max(run.trial_timeout_seconds or 0, WORKER_START_SECONDS),
        )
        self.host = {
            "host": socket.gethostname(),
            "study_pid": os.getpid(),
            "worker_id": worker_id,
        }
        self.begun = False
        self.costs: CostModel | None = None
        self.durations: list[float] = []
        self.duplicates_in_a_row = 0
        self.current: optuna.Trial | None = None
        self.front = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def run(self) -> RunSummary:
        run, study, storage = self.run_section, self.study, self.storage
        try:
            while True:
                self.current = None
                fail_deferred(study, storage, run.storage)
                recover_stale_trials(study, storage, run.heartbeat_seconds)
                trials = study.get_trials(deepcopy=False)
                done = sum(counts_toward_total(t) for t in trials)
                running = sum(t.state == TrialState.RUNNING for t in trials)
                reason = self.stop_reason(done)
                if reason is not None:
                    self.summary.stopped_because = reason
                    break
                if run.n_trials is not None and done + running >= run.n_trials:
                    # Other workers run the rest of the budget: wait for them to finish, or to
                    # go stale and have their recipe retried here.
                    time.sleep(min(1.0, run.heartbeat_seconds))
                    continue
                self.ensure_worker(done)
                self.trial(done)
        except KeyboardInterrupt:
            if self.current is not None:
                _stop(study, storage, self.current.number, "stopped by the user")
            raise
        except Exception as e:
            fault = integrity.storage_fault(e, run.storage)
            if fault is None:
                raise
            if self.current is not None:
                _stop_after_fault(study, storage, run.storage, self.current, fault)
            raise fault from e
        finally:
            self.worker.close()
            self.summary.wall_seconds = self.elapsed()
        return self.summary

    def stop_reason(self, done: int) -> str | None:
        """Why this process stops before asking for another trial (None: it goes on)."""
        run = self.run_section
        if run.n_trials is not None and done >= run.n_trials:
            return f"reached n_trials={run.n_trials}"
        if run.time_limit_seconds is not None and self.elapsed() >= run.time_limit_seconds:
            return f"reached time_limit_seconds={run.time_limit_seconds:g}"
        cheapest = _seconds_left_short_of(
            self.costs, run, self.elapsed(), _cheapest_kd_steps(self.config)
        )
        if done and cheapest is not None:  # (the base trial always runs)
            return (
                f"the time left of time_limit_seconds={run.time_limit_seconds:g} fits no "
                f"further trial (the cheapest takes ≈ {duration(cheapest)})"
            )
        if self.duplicates_in_a_row >= MAX_DUPLICATES_IN_A_ROW:
            return "the search space looks exhausted (only duplicates)"
        return None

    def ensure_worker(self, done: int) -> None:
        """Start the trial worker if it is not running; the first start measures the cost
        model (and derives the knobs that come from it), then the sampler is seeded."""
        if self.worker.alive:
            return

        def starting(step: TrialProgress) -> None:
            self.report(done, None, "starting the trial worker", stage=step)

        self.report(done, None, "starting the trial worker")
        info = self.worker.start(starting)
        self.summary.worker_setup_seconds.append(info["setup_seconds"])
        _check_corpus(self.study, self.config, info)
        if "costs" in info and self.costs is None:
            self.take_costs(CostModel.from_dict(info["costs"]), done)
        if not self.begun:
            self.begin()
            self.begun = True

    def take_costs(self, costs: CostModel, done: int) -> None:
        """Store the cost model and derive the search knobs that come from it."""
        study = self.study
        self.costs = costs
        study.set_user_attr("cost_model", costs.to_dict())
        derived = pending_cost_derivation(study, self.config)
        self.config = self.worker.config = derive_search(study, self.config, costs)
        line = costs.describe(_typical_kd_steps(self.config), self.run_section.time_limit_seconds)
        logger.info("cost model: %s", line)
        self.report(done, None, notice=f"cost model: {line}")
        if derived:
            line = f"search.kd_steps derived from it: {self.config.search['kd_steps'].values()}"
            logger.info(line)
            self.report(done, None, notice=line)

    def begin(self) -> None:
        """Enqueue the starting points and seed the sampler, in the space as derived."""
        run, study = self.run_section, self.study
        added = enqueue_starting_points(study, self.config)
        trials = study.get_trials(deepcopy=False)
        # numpy seeds below 2**32; a random worker id (up to 2**31) times the step is far above
        seed = (run.seed + len(trials) + 1_000_003 * self.worker_id) % 2**32
        study.sampler = make_sampler(self.config, seed)
        logger.info(
            "study %s: %d trials stored, %d recovered, enqueued %s, sampler %s seed %d, "
            "worker %d",
            run.name, len(trials), len(self.recovered), added or "nothing", run.sampler, seed,
            self.worker_id,
        )  # fmt: skip

    def trial(self, done: int) -> None:
        """Ask for a trial, and build, measure and record it unless a check skips it."""
        study, run = self.study, self.run_section
        with warnings.catch_warnings():  # we beat ourselves (Optuna's does in optimize)
            warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
            trial = self.current = study.ask()
        try:
            with _Heartbeat(self.storage, trial, run.heartbeat_seconds):
                is_base = bool(trial.user_attrs.get("is_base"))
                recipe = recipe_for(trial, self.config)
                system, user = recipe_attrs(recipe)
                _set_system_attrs(study, trial, system)
                for key, value in user.items():
                    trial.set_user_attr(key, value)
                trial.set_user_attr("worker", self.host)
                if self.skipped(trial, recipe, is_base):
                    return
                self.duplicates_in_a_row = 0
                status = f"trial {trial.number}: {recipe.describe()}"
                self.report(done, None, status)
                timeout = trial_timeout(self.config, self.costs, recipe)

                def show(step: TrialProgress) -> None:
                    self.report(done, None, status, stage=step)

                base = study.user_attrs.get("base_figures")
                limits = [] if is_base else limits_of(self.config, base)
                result = self.worker.run(recipe, timeout, limits, show)
                # Checked again once every worker that took this recipe with us has written
                # it: one that took it first and wrote it last was not seen.
                if _prune_if_duplicate(study, trial, recipe):
                    return
                state = _record(study, trial, result, self.config, is_base, timeout)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
            if not is_interrupted(study.get_trials(deepcopy=False)[trial.number]):
                raise
            logger.warning(
                "trial %d was failed as stale by another worker while it ran here (this "
                "process stalled for over %d s); its recipe is retried",
                trial.number, GRACE_BEATS * run.heartbeat_seconds,
            )  # fmt: skip
            return
        self.current = None
        self.tally(result, state)
        frozen = study.get_trials(deepcopy=False)[trial.number]
        self.report(done + 1, frozen)
        if is_base and state != TrialState.COMPLETE:
            raise AutoslimError(
                f"the base-model trial {trial.number} failed "
                f"({frozen.user_attrs.get('fail_reason', state.name)}); every other trial "
                "is compared with it, so fix that first (try `autoslim measure`)"
            )

    def skipped(self, trial: optuna.Trial, recipe: Recipe, is_base: bool) -> bool:
        """Put back, or prune with the reason, a trial that must not be built now: one ahead
        of the base trial, one past the study's budget, a duplicate, or one predicted to
        outlast the time left."""
        study, run = self.study, self.run_section
        latest = study.get_trials(deepcopy=False)
        if not is_base and _base_queued_behind(study, latest):
            _put_back(study, trial)
            return True
        if _over_budget(latest, trial, run.n_trials):
            trial.set_user_attr("over_budget", True)
            trial.set_user_attr("prune_reason", f"n_trials={run.n_trials} taken by other workers")
            study.tell(trial, state=TrialState.PRUNED)
            return True
        if _prune_if_duplicate(study, trial, recipe, latest):
            self.duplicates_in_a_row += 1
            return True
        predicted = _seconds_left_short_of(
            self.costs, run, self.elapsed(), recipe.kd_steps, recipe.recovery, recipe.runtime
        )
        if predicted is not None and not is_base:
            trial.set_user_attr("past_time_limit", True)
            trial.set_user_attr(
                "prune_reason",
                f"predicted to take ≈ {duration(predicted)}, more than the "
                f"time left of time_limit_seconds={run.time_limit_seconds:g}",
            )
            study.tell(trial, state=TrialState.PRUNED)
            return True
        return False

    def tally(self, result: TrialResult, state: TrialState) -> None:
        """Count a recorded trial in the run's summary and its duration for the ETA."""
        summary = self.summary
        if result.status in ("done", "abandoned"):
            summary.overhead_seconds.append(result.wall_seconds - result.seconds)
        self.durations.append(result.wall_seconds)
        summary.trials_run += 1
        summary.states[state.name] = summary.states.get(state.name, 0) + 1

    def report(
        self,
        done: int,
        trial: FrozenTrial | None,
        message: str = "",
        notice: str = "",
        stage: TrialProgress | None = None,
    ) -> None:
        if self.progress is None:
            return
        if stage is None:  # not a repeat from inside a trial: the front may have moved
            self.front = pareto_size(self.study)
        run, costs = self.run_section, self.costs
        elapsed = self.elapsed()
        eta = None
        per_trial = _mean(self.durations) if self.durations else None
        if per_trial is None and costs is not None:
            per_trial = costs.trial_seconds(
                _typical_kd_steps(self.config), recovery=costs.longest_recovery
            )
        if per_trial is not None:
            left = [] if run.n_trials is None else [(run.n_trials - done) * per_trial]
            if run.time_limit_seconds is not None:
                left.append(max(0.0, run.time_limit_seconds - elapsed))
            eta = min(left) if left else None
        self.progress(
            Progress(done, run.n_trials, elapsed, eta, self.front, trial, message, notice, stage)
        )


def trial_timeout(config: StudyConfig, costs: CostModel | None, recipe: Recipe) -> float:
    """A trial's limit on its own clock: the study file's, else derived from the cost model."""
    if config.study.trial_timeout_seconds is not None:
        return config.study.trial_timeout_seconds
    if costs is None:
        return UNMEASURED_TIMEOUT_SECONDS
    return costs.timeout_seconds(recipe.kd_steps, recipe.recovery, recipe.runtime)


def _seconds_left_short_of(
    costs: CostModel | None,
    run: RunSection,
    elapsed: float,
    kd_steps: int,
    recovery: str = "none",
    runtime: str = "torch",
) -> float | None:
    """A trial with ``kd_steps`` distillation steps after a ``recovery`` pass, converted into
    ``runtime``, is predicted to take this many seconds, more than the time limit leaves; None
    when it fits (or nothing predicts it)."""
    if costs is None or run.time_limit_seconds is None:
        return None
    predicted = costs.trial_seconds(kd_steps, recovery=recovery, runtime=runtime)
    return predicted if elapsed + predicted > run.time_limit_seconds else None


def _cheapest_kd_steps(config: StudyConfig) -> int:
    return int(min(config.search["kd_steps"].extremes()))


def _typical_kd_steps(config: StudyConfig) -> int:
    """The KD steps of the longest trials the space holds (what the start line quotes)."""
    return int(max(config.search["kd_steps"].extremes()))


def _over_budget(trials: list[FrozenTrial], trial: optuna.Trial, n_trials: int | None) -> bool:
    """Whether a freshly sampled trial is one more than the study's budget: workers that asked
    at the same moment all see each other's RUNNING trials here, and the later starters back
    off (an enqueued trial, a retry or a starting point, always runs: nothing is lost)."""
    if n_trials is None or trial.user_attrs.get("is_base") or "known" in trial.user_attrs:
        return False
    if any(t.number == trial.number and retried_trial_number(t) is not None for t in trials):
        return False
    done = sum(counts_toward_total(t) for t in trials)
    running = sorted((t for t in trials if t.state == TrialState.RUNNING), key=_start_order)
    position = [t.number for t in running].index(trial.number)
    return done + position >= n_trials


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _check_corpus(study: optuna.Study, config: StudyConfig, info: dict[str, Any]) -> None:
    fingerprint = info.get("corpus_fingerprint")
    stored = study.user_attrs.get("corpus_fingerprint")
    if stored is not None and fingerprint is not None and stored != fingerprint:
        raise ConfigError(
            f"{config.path}: the text data changed since study {config.study.name!r} began "
            f"(corpus fingerprint {fingerprint}, stored {stored}); perplexities would not be "
            "comparable. Set a new [study].name or restore the data"
        )
    if stored is None and fingerprint is not None:
        study.set_user_attr("corpus_fingerprint", fingerprint)


def _prune_if_duplicate(
    study: optuna.Study,
    trial: optuna.Trial,
    recipe: Recipe,
    trials: list[FrozenTrial] | None = None,
) -> bool:
    """Record ``trial`` as a duplicate (PRUNED, not counted) if another trial evaluated its
    recipe, or is evaluating it and was taken first."""
    if trials is None:
        trials = study.get_trials(deepcopy=False)
    earlier = _find_evaluated(trials, recipe, trial.number)
    if earlier is None:
        return False
    trial.set_user_attr("duplicate_of", earlier)
    trial.set_user_attr("prune_reason", f"duplicate of trial {earlier}")
    study.tell(trial, state=TrialState.PRUNED)
    return True


def _start_order(trial: FrozenTrial) -> tuple[datetime, int]:
    """Trials by the moment a worker took them (an enqueued trial's number is older)."""
    return (trial.datetime_start or datetime.max, trial.number)


def _find_evaluated(trials: list[FrozenTrial], recipe: Recipe, number: int) -> int | None:
    """The number of a trial that evaluated ``recipe``, or is evaluating it and was taken
    first (by start time: an enqueued trial's number is older than the moment it is taken)."""
    mine = next(t for t in trials if t.number == number)
    for t in trials:
        if t.number == number or "duplicate_of" in t.user_attrs or "over_budget" in t.user_attrs:
            continue
        if WAITS_FOR_BASE in t.user_attrs:
            continue
        if t.user_attrs.get("is_base") and t.state == TrialState.FAIL:  # it is run again
            continue
        if t.state == TrialState.WAITING or is_interrupted(t):
            continue
        if t.state == TrialState.RUNNING and _start_order(t) > _start_order(mine):
            continue
        if has_recipe(t) and recipe_of(t) == recipe:
            return t.number
    return None


@dataclass(frozen=True)
class AbortSavings:
    """What the early abort saved: trials abandoned, the seconds they took, and an estimate
    of the seconds they would have taken in full (the median complete trial with the same
    number of distillation steps)."""

    abandoned: int
    seconds_spent: float
    seconds_saved: float


def _duration(t: FrozenTrial) -> float:
    if t.datetime_start is None or t.datetime_complete is None:
        return 0.0
    return (t.datetime_complete - t.datetime_start).total_seconds()


def abort_savings(study: optuna.Study) -> AbortSavings:
    trials = study.get_trials(deepcopy=False)
    full: dict[int, list[float]] = {}
    for t in trials:
        if t.state == TrialState.COMPLETE and not t.user_attrs.get("is_base"):
            full.setdefault(recipe_of(t).kd_steps, []).append(_duration(t))
    abandoned = [
        t for t in trials if t.state == TrialState.PRUNED and "duplicate_of" not in t.user_attrs
    ]
    spent = sum(_duration(t) for t in abandoned)
    saved = 0.0
    for t in abandoned:
        durations = sorted(full.get(recipe_of(t).kd_steps, []))
        if durations:
            saved += max(0.0, durations[len(durations) // 2] - _duration(t))
    return AbortSavings(len(abandoned), spent, saved)
