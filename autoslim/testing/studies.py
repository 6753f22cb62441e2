"""Stored studies built directly with Optuna, in the exact layout the search writes.

Tests of the report, pick and export read studies through these helpers instead of running a
search: every trial carries the same ``user_attrs`` a real search stores (``recipe``,
``measurement``, ``build``, ``constraint``, ``fail_reason`` / ``prune_reason``, ``is_base``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from autoslim.measure.measurement import CONTENDED
from autoslim.objectives import DEFAULT_OBJECTIVES
from autoslim.recipe import BITS, QUANT_TYPES, Recipe
from autoslim.search.budgets import Limit, hardware_limits
from autoslim.search.config import (
    DataSection,
    EarlyAbort,
    ModelSection,
    RunSection,
    StudyConfig,
)
from autoslim.search.trials import (
    BUILD_ATTR,
    CONSTRAINT,
    MEASUREMENT_ATTR,
    constraint_system_attrs,
    measurement_user_attrs,
    recipe_attrs,
)

# The knobs a search samples, with the distributions these fake trials record for them.
DISTRIBUTIONS: dict[str, BaseDistribution] = {
    "bits": CategoricalDistribution(BITS),
    "quant_type": CategoricalDistribution(QUANT_TYPES),
    "prune_ratio": FloatDistribution(0.0, 0.5, step=0.1),
    "drop_heads_per_layer": IntDistribution(0, 2),
    "kd_steps": IntDistribution(0, 50, step=10),
}


@dataclass(frozen=True)
class FakeTrial:
    """One trial to store: its state, recipe and (for COMPLETE) objective values."""

    recipe: Recipe = field(default_factory=Recipe)
    state: TrialState = TrialState.COMPLETE
    perplexity: float = 0.0
    seconds: float = 0.0
    joules: float = 0.0
    reason: str = ""
    is_base: bool = False
    energy_source: str = "estimate"
    timing_flags: tuple[str, ...] = ()
    extra_attrs: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)  # measurement figures to override


def base(perplexity: float, seconds: float, joules: float) -> FakeTrial:
    return FakeTrial(Recipe(), TrialState.COMPLETE, perplexity, seconds, joules, is_base=True)


def complete(recipe: Recipe, perplexity: float, seconds: float, joules: float) -> FakeTrial:
    return FakeTrial(recipe, TrialState.COMPLETE, perplexity, seconds, joules)


def failed(recipe: Recipe, reason: str) -> FakeTrial:
    return FakeTrial(recipe, TrialState.FAIL, reason=reason)


def pruned(recipe: Recipe, reason: str) -> FakeTrial:
    return FakeTrial(recipe, TrialState.PRUNED, reason=reason)


def running(recipe: Recipe) -> FakeTrial:
    return FakeTrial(recipe, TrialState.RUNNING)


# A small night of search: base 100, budget +20 % (120). Trials 1-4 are the Pareto set within
# the budget (with the base), 5 is dominated by 2 (and was measured on a busy CPU), 6 is over
# the budget; then one of each unfinished state.
DEMO_TRIALS: tuple[FakeTrial, ...] = (
    base(100.0, 1.00, 10.0),
    complete(Recipe(bits=8), 101.0, 0.90, 6.0),
    complete(Recipe(bits=4), 104.0, 0.60, 8.0),
    complete(Recipe(prune_ratio=0.3, kd_steps=20), 110.0, 0.50, 9.0),
    complete(Recipe(bits=4, prune_ratio=0.2), 118.0, 0.55, 5.0),
    replace(
        complete(Recipe(bits=4, quant_type="fp4"), 106.0, 0.70, 8.5), timing_flags=(CONTENDED,)
    ),
    complete(Recipe(prune_ratio=0.5, drop_heads_per_layer=1), 150.0, 0.30, 3.0),
    failed(Recipe(bits=4, drop_heads_per_layer=2), "RuntimeError: <script>alert(1)</script>"),
    pruned(Recipe(prune_ratio=0.5, drop_heads_per_layer=2), "perplexity 900 after pruning"),
    running(Recipe(kd_steps=50)),
)


def measurement_dict(trial: FakeTrial, corpus_fingerprint: str) -> dict[str, Any]:
    """A ``Measurement.to_dict()``-shaped record of the trial's figures."""
    return {
        "perplexity": trial.perplexity,
        "seconds": trial.seconds,
        "joules": trial.joules,
        "energy_source": trial.energy_source,
        "seconds_cv": 0.01,
        "joules_cv": 0.02,
        "size_bytes": 10_000_000 // (2 if trial.recipe.bits < 16 else 1),
        "peak_memory_bytes": 50_000_000,
        "parameters": int(4_900_000 * (1 - trial.recipe.prune_ratio)),
        "top1_agreement": 1.0 if trial.is_base else 0.9,
        "teacher_kl": 0.0 if trial.is_base else 0.05,
        "prefill_tokens_per_second": 20_000.0,
        "decode_tokens_per_second": 400.0,
        "timing_flags": list(trial.timing_flags),
        "provenance": {"device": "cpu", "corpus_fingerprint": corpus_fingerprint},
        **trial.figures,
    }


def make_study(
    storage: str,
    study_name: str = "demo",
    trials: Sequence[FakeTrial] = DEMO_TRIALS,
    *,
    model: str = "reference",
    base_perplexity: float | None = None,
    max_ppl_increase: float = 0.2,
    corpus_fingerprint: str = "0123456789abcdef",
    seed: int = 0,
    workload: dict[str, Any] | None = None,
    objectives: Sequence[str] = DEFAULT_OBJECTIVES,
    budgets: Mapping[str, float] | None = None,
) -> optuna.Study:
    """Create ``study_name`` in ``storage`` holding ``trials`` in the search's layout,
    minimising ``objectives`` (in that order; each trial's values are its figures by name),
    under the hardware ``budgets`` (``[budgets]`` key → limit).

    ``base_perplexity`` defaults to the perplexity of the trial marked ``is_base``.
    """
    if base_perplexity is None:
        base_perplexity = next(t.perplexity for t in trials if t.is_base)
    study = optuna.create_study(
        storage=storage, study_name=study_name, directions=["minimize"] * len(objectives)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(objectives))
    study_config = StudyConfig(
        path="",
        study=RunSection(name=study_name, storage=storage, seed=seed),
        model=ModelSection(name=model),
        data=DataSection(),
        workload=dict(workload or {}),
        objectives=tuple(objectives),
        max_ppl_increase=max_ppl_increase,
        early_abort=EarlyAbort(),
        budgets=dict(budgets or {}),
    ).to_dict()
    for key, value in {
        "config": study_config,
        "base_perplexity": base_perplexity,
        "max_ppl_increase": max_ppl_increase,
        "corpus_fingerprint": corpus_fingerprint,
        "model": model,
        "seed": seed,
    }.items():
        study.set_user_attr(key, value)
    budget = base_perplexity * (1 + max_ppl_increase)
    limits = hardware_limits(budgets or {})
    for trial in trials:
        study.add_trial(_frozen(trial, budget, corpus_fingerprint, objectives, limits))
    return study


def make_study_file(folder: Path, study_name: str = "demo", **kwargs: Any) -> str:
    """:func:`make_study` in a new SQLite file under ``folder``; returns the storage URL."""
    storage = f"sqlite:///{folder / (study_name + '.db')}"
    make_study(storage, study_name, **kwargs)
    return storage


def _frozen(
    trial: FakeTrial,
    budget: float,
    fingerprint: str,
    objectives: Sequence[str],
    limits: Sequence[Limit],
) -> optuna.trial.FrozenTrial:
    params = {k: v for k, v in trial.recipe.to_params().items() if k in DISTRIBUTIONS}
    system_attrs, user_attrs = recipe_attrs(trial.recipe)
    user_attrs |= trial.extra_attrs
    if trial.is_base:
        user_attrs["is_base"] = True
    values = None
    if trial.state == TrialState.COMPLETE:
        measurement = measurement_dict(trial, fingerprint)
        values = [float(measurement[name]) for name in objectives]
        violations = {CONSTRAINT: trial.perplexity / budget - 1.0}
        violations |= {limit.name: limit.violation(measurement) for limit in limits}
        user_attrs |= measurement_user_attrs(measurement)
        system_attrs[BUILD_ATTR] = {"stage_seconds": {"quantize": 0.1}, "info": {}}
        user_attrs["constraint"] = list(violations.values())
        system_attrs[MEASUREMENT_ATTR] = measurement
        system_attrs |= constraint_system_attrs(violations)
    elif trial.state == TrialState.FAIL:
        user_attrs["fail_reason"] = trial.reason
    elif trial.state == TrialState.PRUNED:
        user_attrs["prune_reason"] = trial.reason
    return optuna.trial.create_trial(
        state=trial.state,
        values=values,
        params=params,
        distributions={k: DISTRIBUTIONS[k] for k in params},
        user_attrs=user_attrs,
        system_attrs=system_attrs,
    )


# A workload small enough for tests on tiny models (their context is 128 tokens).
TINY_WORKLOAD: dict[str, Any] = {
    "protocol": {"window": 128, "max_windows": 8, "batch_size": 8},
    "prefill_windows": 1,
    "decode_tokens": 4,
    "repeats": 1,
}


def make_built_study(
    storage: str,
    model: str | Path,
    corpus: Any,
    recipes: Sequence[Recipe],
    *,
    study_name: str = "built",
    extra_trials: Sequence[FakeTrial] = (),
    workload: dict[str, Any] | None = None,
    seed: int = 0,
    **kwargs: Any,
) -> optuna.Study:
    """A study whose trials are real builds of ``model``: each recipe is built and converted
    into its runtime by the pipeline and its perplexity measured under the workload's
    protocol, as a search would store it; seconds and joules are made up (falling with the
    trial number). The identity recipe is the base-model trial. ``corpus`` is the default
    (stdlib) corpus."""
    from autoslim import models
    from autoslim.measure import Workload
    from autoslim.measure.perplexity import perplexity
    from autoslim.pipeline import Pipeline

    workload = TINY_WORKLOAD if workload is None else workload
    pipeline = Pipeline(
        models.load_model(str(model)), corpus, Workload.from_dict(workload), seed=seed
    )
    ids = pipeline.eval_ids()
    trials = []
    for i, recipe in enumerate(recipes):
        with pipeline.built(recipe) as built:
            measured = perplexity(built.model, ids, pipeline.workload.protocol).perplexity
        trials.append(
            FakeTrial(
                recipe,
                TrialState.COMPLETE,
                measured,
                1.0 - 0.1 * i,
                10.0 - i,
                is_base=recipe.is_identity(),
            )
        )
    return make_study(
        storage,
        study_name,
        [*trials, *extra_trials],
        model=str(model),
        corpus_fingerprint=corpus.fingerprint,
        seed=seed,
        workload=workload,
        **kwargs,
    )
