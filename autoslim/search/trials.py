"""One typed reader of stored trials: what pick, report, export and the search summary read.

A study written by ``autoslim search`` (layout in :mod:`autoslim.search.study`) names its
objectives (``study.metric_names``, else the stored config's ``objectives.names``).
:func:`read_trials`
turns each stored trial into a :class:`TrialRecord` whose ``values`` are keyed by those names,
so no reader depends on the order or the subset of objectives a study file chose.

Optuna's public API computes the front of a study's own objectives over all its feasible
trials (``Study.best_trials``); reports also need fronts of a pair of objectives and of the
trials under a tighter budget, and benchmarks a hypervolume, which Optuna only has in private
modules. :func:`pareto_mask` and :func:`hypervolume` are small exact implementations of both.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from autoslim.errors import ConfigError
from autoslim.measure.measurement import NON_FINITE
from autoslim.recipe import Recipe
from autoslim.search.budgets import PERPLEXITY
from autoslim.search.config import StudyConfig

# The trial system attr holding the full Measurement record (see ``study._record``): system
# attrs stay out of Optuna's plot hovers and the dashboard's 1,024-character attr cut.
MEASUREMENT_ATTR = "autoslim:measurement"
# The same for the full recipe (every knob, fixed ones included) and the build record; the
# ``recipe_summary`` user attr says the recipe in one line where dashboards show attrs.
RECIPE_ATTR = "autoslim:recipe"
BUILD_ATTR = "autoslim:build"


@dataclass(frozen=True)
class TrialRecord:
    """One stored trial as autoslim reads it."""

    number: int
    state: TrialState
    recipe: Recipe
    measurement: dict[str, Any]
    values: dict[str, float]  # objective name → value; empty unless COMPLETE
    constraints: tuple[float, ...]  # each <= 0 when feasible
    feasible: bool  # COMPLETE and every constraint <= 0
    reason: str  # fail_reason / prune_reason, "" when none
    is_base: bool
    build: dict[str, Any] = field(default_factory=dict)
    duration_seconds: float | None = None
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)  # name → TaskResult dict
    tasks_skipped: str = ""  # the cheaper budgets missed, when the tasks were not run

    @property
    def figures(self) -> dict[str, Any]:
        """Every figure of the trial by name: the measurement's and each task's score."""
        return {**self.measurement, **{n: r.get("value") for n, r in self.tasks.items()}}

    @property
    def complete(self) -> bool:
        return self.state == TrialState.COMPLETE

    @property
    def perplexity(self) -> float:
        return self.values["perplexity"]

    def to_dict(self) -> dict[str, Any]:
        """The trial as every ``--json`` output shows it."""
        return {
            "number": self.number,
            "state": self.state.name,
            "values": dict(self.values),
            "feasible": self.feasible,
            "is_base": self.is_base,
            "recipe": self.recipe.to_params(),
            "recipe_summary": self.recipe.describe(),
            "reason": self.reason,
        }


def objective_names(study: optuna.Study) -> tuple[str, ...]:
    """The study's objective names, in the order of ``FrozenTrial.values``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        names = study.metric_names
    if not names:
        stored = study.user_attrs.get("config")
        objectives = stored.get("objectives") if isinstance(stored, dict) else None
        names = objectives.get("names") if isinstance(objectives, dict) else None
    if not names or len(names) != len(study.directions):
        raise ConfigError(
            f"study {study.study_name!r} does not name its {len(study.directions)} "
            "objective(s) (no metric names, no stored config): it was not written by "
            "`autoslim search`"
        )
    return tuple(str(n) for n in names)


def stored_config(study: optuna.Study) -> StudyConfig:
    """The validated study file the search stored (its ``config`` study attr)."""
    stored = study.user_attrs.get("config")
    if not isinstance(stored, dict):
        raise ConfigError(
            f"study {study.study_name!r} records no config: it was not written by "
            "`autoslim search`, so its trials cannot be rebuilt"
        )
    return StudyConfig.from_dict(stored)


def measurement_of(trial: FrozenTrial) -> dict[str, Any]:
    """The trial's full Measurement record (empty when it has none), a figure stored as
    ``"nan"`` (``seconds_cv`` of one repeat) read back as the float it was."""
    record = trial.system_attrs.get(MEASUREMENT_ATTR, trial.user_attrs.get("measurement"))
    if not isinstance(record, dict):
        return {}
    return {k: NON_FINITE.get(v, v) if isinstance(v, str) else v for k, v in record.items()}


def recipe_of(trial: FrozenTrial) -> Recipe:
    """The recipe a stored trial evaluated: its recipe record (the ``autoslim:recipe`` system
    attr, or the ``recipe`` user attr of studies written before), else its params."""
    stored = trial.system_attrs.get(RECIPE_ATTR, trial.user_attrs.get("recipe", trial.params))
    return Recipe.from_params(stored)


def has_recipe(trial: FrozenTrial) -> bool:
    """Whether the trial stores its recipe record (a trial just asked for may not yet)."""
    return RECIPE_ATTR in trial.system_attrs or "recipe" in trial.user_attrs


def recipe_attrs(recipe: Recipe) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (system, user) attrs that store a trial's recipe."""
    return {RECIPE_ATTR: recipe.to_params()}, {"recipe_summary": recipe.describe()}


def _constraints(trial: FrozenTrial) -> tuple[float, ...]:
    stored = trial.user_attrs.get("constraint")
    if isinstance(stored, list):  # autoslim's own list: one value per constraint, in order
        return tuple(float(v) for v in stored)
    if trial.constraints:
        # Optuna 5 reads both the ``constraints`` list and ``constraints:NAME`` keys, which
        # autoslim writes with one value: count each value once.
        return tuple(dict.fromkeys(float(v) for v in trial.constraints.values()))
    return tuple(float(v) for v in trial.user_attrs.get("constraint", ()))


STALE_REASON = (
    "Interrupted: its worker stopped mid-trial (killed, crashed or lost); recipe retried once"
)


def is_interrupted(trial: FrozenTrial) -> bool:
    """A trial stopped mid-way: by the user, or failed as stale by the heartbeat (the only FAIL
    the study does not give a ``fail_reason``)."""
    attrs = trial.user_attrs
    return bool(attrs.get("interrupted")) or (
        trial.state == TrialState.FAIL and "fail_reason" not in attrs
    )


def record(trial: FrozenTrial, names: Sequence[str]) -> TrialRecord:
    """One stored trial as a :class:`TrialRecord`; ``names`` are the study's objectives."""
    complete = trial.state == TrialState.COMPLETE
    values = dict(zip(names, map(float, trial.values), strict=True)) if complete else {}
    constraints = _constraints(trial)
    attrs = trial.user_attrs
    duration = None
    if trial.datetime_start is not None and trial.datetime_complete is not None:
        duration = (trial.datetime_complete - trial.datetime_start).total_seconds()
    build = trial.system_attrs.get(BUILD_ATTR, attrs.get("build"))
    return TrialRecord(
        number=trial.number,
        state=trial.state,
        recipe=recipe_of(trial),
        measurement=measurement_of(trial),
        values=values,
        constraints=constraints,
        feasible=complete and all(c <= 0 for c in constraints),
        reason=str(
            attrs.get("fail_reason")
            or attrs.get("prune_reason")
            or (STALE_REASON if is_interrupted(trial) else "")
        ),
        is_base=bool(attrs.get("is_base", False)),
        build=dict(build) if isinstance(build, dict) else {},
        duration_seconds=duration,
        tasks=dict(attrs.get("tasks") or {}),
        tasks_skipped=str(attrs.get("tasks_skipped") or ""),
    )


def read_trials(
    study: optuna.Study, states: Sequence[TrialState] | None = None
) -> list[TrialRecord]:
    """Every trial of ``study`` (or those in ``states``) in trial-number order."""
    names = objective_names(study)
    trials = study.get_trials(deepcopy=False, states=None if states is None else tuple(states))
    return [record(t, names) for t in sorted(trials, key=lambda t: t.number)]


def minimised(study: optuna.Study, record: TrialRecord, names: Sequence[str]) -> list[float]:
    """The trial's values of ``names`` (study objectives), negated where maximised, so
    :func:`pareto_mask` can compare them."""
    signs = {
        n: -1.0 if d == optuna.study.StudyDirection.MAXIMIZE else 1.0
        for n, d in zip(objective_names(study), study.directions, strict=True)
    }
    return [signs[n] * record.values[n] for n in names]


def best_numbers(study: optuna.Study) -> set[int]:
    """Numbers of Optuna's best trials: the feasible Pareto front of all objectives."""
    return {t.number for t in study.best_trials}


def best_records(study: optuna.Study) -> list[TrialRecord]:
    """Optuna's best trials (the feasible Pareto set) as records, by perplexity then number."""
    best = best_numbers(study)
    return sorted(
        (r for r in read_trials(study, (TrialState.COMPLETE,)) if r.number in best),
        key=lambda r: (r.values.get("perplexity", 0.0), r.number),
    )


def pareto_mask(points: Sequence[Sequence[float]]) -> list[bool]:
    """For each point (all coordinates minimised): whether no other point dominates it.

    A point dominates another when it is no larger in every coordinate and smaller in one;
    equal points do not dominate each other (both stay on the front, as in Optuna).
    """
    if len(points) == 0:
        return []
    a = np.asarray(points, dtype=float).reshape(len(points), -1)
    no_worse = (a[:, None, :] <= a[None, :, :]).all(axis=2)
    better = (a[:, None, :] < a[None, :, :]).any(axis=2)
    dominated = np.asarray((no_worse & better).any(axis=0), dtype=bool)
    return [not d for d in dominated.tolist()]


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """The volume dominated by ``points`` and bounded by ``reference`` (all minimised).

    Exact: the box below ``reference`` is cut into cells at every front point's coordinates
    and the cells some point dominates are summed. The cells grow as n^d: fine for the tens
    of points of a benchmark study, not for thousands in 3D.
    """
    ref = np.asarray(reference, dtype=float)
    a = np.asarray(points, dtype=float).reshape(-1, len(ref))
    a = a[(a < ref).all(axis=1)]
    if not len(a):
        return 0.0
    a = a[np.asarray(pareto_mask(a.tolist()), dtype=bool)]
    edges = [np.unique(np.append(a[:, k], ref[k])) for k in range(len(ref))]
    lows = np.stack(
        [g.ravel() for g in np.meshgrid(*(e[:-1] for e in edges), indexing="ij")], axis=1
    )
    sizes = np.prod(np.meshgrid(*(np.diff(e) for e in edges), indexing="ij"), axis=0).ravel()
    covered = np.zeros(len(lows), dtype=bool)
    for point in a:
        covered |= (point <= lows).all(axis=1)
    return float(sizes[covered].sum())


# The name of the perplexity-budget constraint (Optuna 5's ``constraints:NAME`` system attr).
CONSTRAINT = PERPLEXITY


def constraint_system_attrs(violations: Mapping[str, float]) -> dict[str, Any]:
    """The system attrs that store the constraints (name → violation, <= 0 feasible) for
    every client: Optuna 5 reads ``constraints:NAME``; optuna-dashboard 0.21 (and Optuna 4's
    samplers) only the older ``constraints`` list."""
    return {
        "constraints": list(violations.values()),
        **{f"constraints:{name}": v for name, v in violations.items()},
    }


def measurement_user_attrs(measurement: dict[str, Any]) -> dict[str, Any]:
    """The flat user attrs of a Measurement record: each numeric figure under its own name
    (sortable and plottable in dashboards) and the energy source. The full record goes to
    the ``autoslim:measurement`` system attr."""
    flat: dict[str, Any] = {
        name: value
        for name, value in measurement.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    if "energy_source" in measurement:
        flat["energy_source"] = str(measurement["energy_source"])
    return flat
