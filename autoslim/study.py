"""The search: an Optuna multi-objective study over recipes, resumable and failure-proof.

``run_study(config)`` creates the study named in the study file, or resumes it (same name,
same storage → same study), then asks for recipes and tells results until the trial count
or the time limit is reached. What a stored study holds (other commands read it):

- study user_attrs: ``config`` (the validated study file), ``base_perplexity``,
  ``max_ppl_increase``, ``corpus_fingerprint``, ``model``, ``seed``; metric names set.
- trial user_attrs (JSON only): ``recipe`` (full Recipe), every numeric figure of the
  measurement flat under its own name (``perplexity``, ``size_bytes``, ``peak_memory_bytes``,
  ``top1_agreement``, ``teacher_kl``, ``cpu_wait_fraction``, ``seconds_cv``…: sortable in
  dashboards) and ``energy_source``, ``build``,
  ``constraint`` (``[ppl / base − 1 − max_ppl_increase]``, ≤ 0 feasible), ``fail_reason``
  on FAIL, ``prune_reason`` on PRUNED, ``is_base`` on the base-model trial, plus
  ``known`` (label of an enqueued known recipe), ``retry_of``, ``duplicate_of``,
  ``interrupted``, ``worker`` and ``heartbeat`` bookkeeping.
- trial system attrs: ``autoslim:measurement`` (the full Measurement record, out of plot
  hovers and the dashboard's 1,024-character attr cut), the constraint as Optuna 5's
  ``constraints:perplexity_increase`` and as the older ``constraints`` list, the only one
  optuna-dashboard 0.21 reads. Read all of it back with :func:`autoslim.trials.read_trials`.

The base model and known recipes are enqueued first. A recipe already evaluated is not run
again (the duplicate is recorded as PRUNED). A trial left RUNNING by a process that died is
marked FAIL and its recipe re-enqueued once.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoslim import space as search_space
from autoslim.budgets import constraint_names, limits_of
from autoslim.config import StudyConfig, mask_url
from autoslim.errors import AutoslimError, ConfigError
from autoslim.recipe import Recipe
from autoslim.trials import (
    MEASUREMENT_ATTR,
    constraint_system_attrs,
    measurement_user_attrs,
    recipe_of,
)
from autoslim.worker import DEFAULT_OBJECTIVE, TrialResult, Worker

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 10.0
# A RUNNING trial whose heartbeat is older than this is stale, whatever its host.
STALE_SECONDS = 60.0
# Consecutive duplicate proposals after which the space counts as exhausted.
MAX_DUPLICATES_IN_A_ROW = 30
SQLITE_LOCK_TIMEOUT_SECONDS = 60
# Attempts to open a database whose tables another worker is creating at the same moment.
SCHEMA_RACE_RETRIES = 5
# Loading a large base model in a fresh worker can take minutes.
WORKER_START_SECONDS = 900.0


@dataclass
class Progress:
    """What the CLI shows after each trial."""

    done: int
    total: int | None
    elapsed_seconds: float
    eta_seconds: float | None
    pareto_size: int
    trial: FrozenTrial | None = None
    message: str = ""


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


def make_storage(url: str) -> optuna.storages.RDBStorage:
    """The RDB storage behind ``url`` (SQLite gets a lock timeout for several processes)."""
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    url = _with_installed_driver(url)
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": SQLITE_LOCK_TIMEOUT_SECONDS}}
    try:
        storage = _open_rdb(url, kwargs)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError(
            f"cannot open storage {mask_url(url)!r}: {type(e).__name__}: {mask_url(first)}; "
            "check the server, database name and user"
        ) from e
    if url.startswith("sqlite"):
        _write_ahead_log(storage.engine)
    return storage


def _open_rdb(url: str, engine_kwargs: dict[str, Any]) -> optuna.storages.RDBStorage:
    """Open (and on first use create) Optuna's tables. Workers that start together on an empty
    database race to create them; the losers see the winner's tables half-made (a duplicate
    type or table) and simply open them again once it is done."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(SCHEMA_RACE_RETRIES):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except (IntegrityError, ProgrammingError) as e:
            if attempt == SCHEMA_RACE_RETRIES - 1:
                raise
            logger.info("storage schema being created by another worker (%s); retrying", e.orig)
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable: the last attempt returns or raises")


def _with_installed_driver(url: str) -> str:
    """``postgresql://`` means psycopg 3 to SQLAlchemy 2.1; use psycopg2 when only it is
    installed (the ``autoslim[postgres]`` extra)."""
    import importlib.util

    if not url.startswith("postgresql://"):
        return url
    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2"):
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def _write_ahead_log(engine: Any) -> None:
    """SQLite in WAL mode with normal sync: readers never block the writer and a commit
    costs no fsync (a power cut may lose the last trials, never corrupt the file)."""
    from sqlalchemy import event

    def pragmas(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(engine, "connect", pragmas)
    engine.dispose()


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
        return optuna.samplers.GridSampler(search_space.grid_space(config.search), seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def _comparable(config_dict: dict[str, Any]) -> dict[str, Any]:
    """The parts of a stored config that must not change when a study is resumed."""
    return {
        "model": config_dict["model"]["name"],
        "objectives": config_dict["objectives"],
        "search": config_dict["search"],
        "budgets": config_dict.get("budgets", {}),
        "tasks": config_dict.get("tasks", {}),
    }


def open_study(config: StudyConfig, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Create the study, or load it and check it was made from a compatible study file."""
    name = config.study.name
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        directions=config.directions,
        load_if_exists=True,
    )
    current = config.to_dict()
    stored = study.user_attrs.get("config")
    if stored is not None and _comparable(stored) != _comparable(current):
        changed = [k for k, v in _comparable(current).items() if _comparable(stored)[k] != v]
        raise ConfigError(
            f"{config.path}: study {name!r} in {mask_url(config.study.storage)} was created "
            f"with a different {' and '.join(changed)}; results would not be comparable. "
            "Set a new [study].name, or restore the old values"
        )
    if len(study.directions) != len(config.objectives):
        raise ConfigError(
            f"{config.path}: study {name!r} has {len(study.directions)} objectives, the file "
            f"{len(config.objectives)}; set a new [study].name"
        )
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
    study.set_user_attr("config", current)
    study.set_user_attr("max_ppl_increase", config.max_ppl_increase)
    study.set_user_attr("constraint_names", constraint_names(config))
    study.set_user_attr("model", config.model.name)
    study.set_user_attr("seed", config.study.seed)
    return study


def base_recipe(config: StudyConfig) -> Recipe:
    """The recipe that is the base model as the study loads it (its precision, nothing else)."""
    from autoslim import models

    model = config.model
    return Recipe(
        precision=models.base_precision(
            model.name, model.dtype, model.device, trust_remote_code=model.trust_remote_code
        )
    )


def counts_toward_total(trial: FrozenTrial) -> bool:
    """Finished trials that evaluated a recipe (not duplicates, not interrupted ones)."""
    attrs = trial.user_attrs
    return (
        trial.state.is_finished()
        and "duplicate_of" not in attrs
        and not attrs.get("interrupted", False)
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_stale(trial: FrozenTrial, now: float) -> bool:
    worker = trial.user_attrs.get("worker") or {}
    same_host = worker.get("host") == socket.gethostname()
    if same_host and "study_pid" in worker and not _pid_alive(int(worker["study_pid"])):
        return True
    beat = trial.user_attrs.get("heartbeat")
    if beat is None and trial.datetime_start is not None:
        beat = trial.datetime_start.timestamp()
    return beat is not None and now - float(beat) > STALE_SECONDS


def _fail_and_retry(study: optuna.Study, trial: FrozenTrial, why: str) -> bool:
    """Mark a RUNNING trial FAIL (interrupted) and re-enqueue its recipe once."""
    handle = optuna.trial.Trial(study, trial._trial_id)
    retried = "retry_of" in trial.user_attrs
    reason = f"Interrupted: {why}"
    reason += "; already a retry, not retried again" if retried else "; recipe re-enqueued"
    try:
        handle.set_user_attr("fail_reason", reason)
        handle.set_user_attr("interrupted", True)
        study.tell(trial.number, state=TrialState.FAIL)
    except (RuntimeError, ValueError):  # another worker got there first
        return False
    logger.warning("trial %d: %s", trial.number, reason)
    if not retried:
        attrs: dict[str, Any] = {"retry_of": trial.number}
        for key in ("is_base", "known"):
            if key in trial.user_attrs:
                attrs[key] = trial.user_attrs[key]
        study.enqueue_trial(dict(trial.params), user_attrs=attrs)
    return True


def recover_stale_trials(study: optuna.Study) -> list[int]:
    """Fail RUNNING trials whose process is gone (or silent too long); retry their recipe."""
    now = time.time()
    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _is_stale(trial, now) and _fail_and_retry(
            study, trial, "its process stopped mid-trial (killed, crashed or lost)"
        ):
            recovered.append(trial.number)
    return recovered


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
    """Writes the trial's ``heartbeat`` user attr every few seconds while it runs."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_SECONDS):
            try:
                self.trial.set_user_attr("heartbeat", time.time())
            except Exception:  # the trial may have finished meanwhile
                return

    def __enter__(self) -> _Heartbeat:
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
) -> TrialState:
    """Store a worker's result on the trial and tell the study; returns the final state."""
    trial.set_user_attr("worker", {**trial.user_attrs.get("worker", {}), **result.worker})
    if result.status == "abandoned":
        trial.set_user_attr("prune_reason", result.reason)
        trial.set_user_attr("build", {"stage_seconds": {}, "info": result.payload})
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
    trial.set_user_attr("build", result.payload.get("build", {}))
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
        base = _wait_for_base(study, config.study.trial_timeout_seconds)
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


def _set_system_attrs(study: optuna.Study, trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    """Trial system attrs through the storage's public API (Trial has no setter for them)."""
    storage = trial.storage
    study_id = storage.get_study_id_from_name(study.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
    for key, value in attrs.items():
        storage.set_trial_system_attr(trial_id, key, value)


def run_study(
    config: StudyConfig,
    *,
    objective: str = DEFAULT_OBJECTIVE,
    progress: Callable[[Progress], None] | None = None,
) -> RunSummary:
    """Create or resume the study and run trials until the count or the time limit."""
    run = config.study
    started = time.monotonic()
    storage = make_storage(run.storage)
    study = open_study(config, storage)
    summary = RunSummary(study_name=run.name, storage=mask_url(run.storage))
    recovered = recover_stale_trials(study)
    added = enqueue_starting_points(study, config)
    trials = study.get_trials(deepcopy=False)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    seed = run.seed + len(trials) + 1_000_003 * running
    study.sampler = make_sampler(config, seed)
    logger.info(
        "study %s: %d trials stored, %d recovered, enqueued %s, sampler %s seed %d",
        run.name, len(trials), len(recovered), added or "nothing", run.sampler, seed,
    )  # fmt: skip
    worker = Worker(
        config, objective, start_timeout=max(run.trial_timeout_seconds, WORKER_START_SECONDS)
    )
    host = {"host": socket.gethostname(), "study_pid": os.getpid()}
    durations: list[float] = []
    duplicates_in_a_row = 0

    def report(done: int, trial: FrozenTrial | None, message: str = "") -> None:
        if progress is None:
            return
        elapsed = time.monotonic() - started
        eta = None
        if durations:
            left = [] if run.n_trials is None else [(run.n_trials - done) * _mean(durations)]
            if run.time_limit_seconds is not None:
                left.append(max(0.0, run.time_limit_seconds - elapsed))
            eta = min(left) if left else None
        progress(Progress(done, run.n_trials, elapsed, eta, pareto_size(study), trial, message))

    try:
        while True:
            trials = study.get_trials(deepcopy=False)
            done = sum(counts_toward_total(t) for t in trials)
            elapsed = time.monotonic() - started
            if run.n_trials is not None and done >= run.n_trials:
                summary.stopped_because = f"reached n_trials={run.n_trials}"
                break
            if run.time_limit_seconds is not None and elapsed >= run.time_limit_seconds:
                summary.stopped_because = f"reached time_limit_seconds={run.time_limit_seconds:g}"
                break
            if duplicates_in_a_row >= MAX_DUPLICATES_IN_A_ROW:
                summary.stopped_because = "the search space looks exhausted (only duplicates)"
                break
            if not worker.alive:
                info = worker.start()
                summary.worker_setup_seconds.append(info["setup_seconds"])
                _check_corpus(study, config, info)
            trial = study.ask()
            is_base = bool(trial.user_attrs.get("is_base"))
            recipe = recipe_for(trial, config)
            trial.set_user_attr("recipe", recipe.to_dict())
            trial.set_user_attr("worker", host)
            trial.set_user_attr("heartbeat", time.time())
            # Read the trials again after writing our recipe: of two workers that drew the
            # same recipe at once, the later-numbered trial then always sees the other.
            latest = study.get_trials(deepcopy=False)
            earlier = _find_evaluated(latest, recipe, trial.number)
            if earlier is not None:
                duplicates_in_a_row += 1
                trial.set_user_attr("duplicate_of", earlier)
                trial.set_user_attr("prune_reason", f"duplicate of trial {earlier}")
                study.tell(trial, state=TrialState.PRUNED)
                continue
            duplicates_in_a_row = 0
            report(done, None, f"trial {trial.number}: {recipe.describe()}")
            with _Heartbeat(trial):
                limits = [] if is_base else limits_of(config, study.user_attrs.get("base_figures"))
                result = worker.run(recipe, run.trial_timeout_seconds, limits)
            state = _record(study, trial, result, config, is_base)
            if result.status in ("done", "abandoned"):
                summary.overhead_seconds.append(result.wall_seconds - result.seconds)
            durations.append(result.wall_seconds)
            summary.trials_run += 1
            summary.states[state.name] = summary.states.get(state.name, 0) + 1
            frozen = study.get_trials(deepcopy=False)[trial.number]
            report(done + 1, frozen)
            if is_base and state != TrialState.COMPLETE:
                raise AutoslimError(
                    f"the base-model trial {trial.number} failed "
                    f"({frozen.user_attrs.get('fail_reason', state.name)}); every other trial "
                    "is compared with it, so fix that first (try `autoslim measure`)"
                )
    except KeyboardInterrupt:
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if (t.user_attrs.get("worker") or {}).get("study_pid") == os.getpid():
                _fail_and_retry(study, t, "stopped by the user")
        raise
    finally:
        worker.close()
        summary.wall_seconds = time.monotonic() - started
    return summary


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


def _find_evaluated(trials: list[FrozenTrial], recipe: Recipe, number: int) -> int | None:
    """The number of a trial that evaluated ``recipe``, or is evaluating it and started
    first (a lower number)."""
    for t in trials:
        if t.number == number or "duplicate_of" in t.user_attrs:
            continue
        if t.state == TrialState.WAITING or t.user_attrs.get("interrupted"):
            continue
        if t.state == TrialState.RUNNING and t.number > number:
            continue
        if "recipe" in t.user_attrs and recipe_of(t) == recipe:
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
