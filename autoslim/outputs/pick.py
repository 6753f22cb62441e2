"""Choosing one trial: the perplexity budget first, then how much time and energy matter.

The candidates are the COMPLETE trials that meet the perplexity budget
(``perplexity <= base_perplexity * (1 + max_ppl_increase)``) and lie on the Pareto front of
the study's objectives (whichever its study file named, read by name), as Optuna computes it
(``Study.best_trials``). Within the budget a trial is Pareto-optimal among the feasible trials
exactly when it is Pareto-optimal among all trials, because whatever dominates it has a
perplexity no higher.

Each candidate's seconds and joules, where the study minimises them, are normalised as the
relative excess over the best candidate (``value / best - 1``: 0 for the best, 0.25 for 25 %
slower or hungrier) and scored ``w_time * seconds_norm + w_energy * joules_norm``, the weights
renormalised to sum to 1 over the objectives the study has (a study of perplexity and joules
weighs energy only; one with neither ranks by perplexity). Relative excess keeps a 0.04 %
difference a 0.04 % difference (min-max scaling would stretch any gap, however small, to the
full 0..1 range), so the weights trade real percentages of time against energy.

The lowest score wins unless another candidate is within measurement noise of it: a score gap
no larger than ``w_time * seconds CV + w_energy * joules CV`` (the larger CV of the two trials,
over the repeats of their measurements) is a tie, and ties go to the lower perplexity, then the
lower score, then the lower trial number. A user who gives up perplexity for speed should get
speed, not timing noise.

Only timings that can be trusted compete. A trial whose stored timing is flagged
(:func:`autoslim.outputs.retime.untrusted_timing`: measured on a busy CPU, or too noisy) is kept
off the front and out of the choice, and the reason says so; when no trial within the budget has
a trusted timing, the stored figures rank them all and the reason says that they cannot be
trusted (a pick that refused would leave a user on a busy machine with nothing). With
``retimed`` figures (``pick
--retime``: :func:`retime_numbers` — the top of the stored ranking, the untrusted trials the
front would hold, and the base — re-timed side by side in one process), the choice is among
the re-timed trials, on those figures and their spread, and the reason says when the winner's
advantage over the base model is within noise.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import optuna
from optuna.trial import TrialState

from autoslim.errors import ConfigError
from autoslim.objectives import unit_of
from autoslim.outputs.retime import DEFAULT_TOP, Retimed, untrusted_timing
from autoslim.outputs.weights import Weights
from autoslim.recipe import Recipe
from autoslim.search.budgets import PERPLEXITY, Limit, limits_of, missed, tightened
from autoslim.search.config import StudyConfig
from autoslim.search.trials import (
    TrialRecord,
    minimised,
    objective_names,
    pareto_mask,
    read_trials,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Budget:
    """The highest perplexity allowed (the base model's plus a relative increase) and the
    study's other limits (hardware budgets, task constraints: :mod:`autoslim.search.budgets`)."""

    base_perplexity: float
    max_ppl_increase: float
    limits: tuple[Limit, ...] = ()

    def admits(self, trial: TrialRecord) -> bool:
        """Whether ``trial`` meets the perplexity budget and every other limit."""
        return self.allows(trial.perplexity) and not missed(self.limits, trial.figures)

    def explain(self, trial: TrialRecord) -> str:
        """Each limit met or missed by ``trial``, with its figure."""
        return "; ".join(limit.explain(trial.figures) for limit in self.limits)

    @property
    def max_perplexity(self) -> float:
        return self.base_perplexity * (1 + self.max_ppl_increase)

    def allows(self, perplexity: float) -> bool:
        return perplexity <= self.max_perplexity

    def increase(self, perplexity: float) -> float:
        """Relative perplexity increase over the base model."""
        return perplexity / self.base_perplexity - 1

    def describe(self) -> str:
        return f"perplexity <= {self.max_perplexity:.4g} " + "".join(
            [f"(base {self.base_perplexity:.4g} +{self.max_ppl_increase:.1%})"]
            + [f", {limit.text}" for limit in self.limits]
        )


def study_budget(
    study: optuna.Study,
    max_ppl_increase: float | None = None,
    tighten: Mapping[str, float] | None = None,
) -> Budget | None:
    """The study's budget, or a tighter one (``tighten``: a ``[budgets]`` key or a task bound's
    :func:`autoslim.search.budgets.task_key` → limit, only tighter than the study's own); None when
    the study holds no base perplexity."""
    attrs = study.user_attrs
    stored = attrs.get("max_ppl_increase")
    base = attrs.get("base_perplexity")
    if max_ppl_increase is not None:
        if not (math.isfinite(max_ppl_increase) and max_ppl_increase >= 0):
            raise ConfigError(
                f"--max-ppl-increase {max_ppl_increase!r}: must be >= 0 (0.1 = +10 %)"
            )
        if stored is not None and max_ppl_increase > stored:
            raise ConfigError(
                f"--max-ppl-increase {max_ppl_increase:g} is looser than the study's "
                f"{stored:g}: the search abandoned recipes beyond its own budget, so only a "
                "tighter budget can be chosen here; give a value <= "
                f"{stored:g} or search again with a looser budget"
            )
        stored = max_ppl_increase
    if base is None or stored is None:
        return None
    return Budget(float(base), float(stored), tuple(_other_limits(study, tighten or {})))


def _other_limits(study: optuna.Study, tighten: Mapping[str, float]) -> list[Limit]:
    """The stored study's limits other than perplexity, each tightened where asked."""
    stored = study.user_attrs.get("config")
    base = study.user_attrs.get("base_figures")
    if not isinstance(stored, dict):
        return tightened([], tighten, ())
    config = StudyConfig.from_dict(stored)
    limits = [limit for limit in limits_of(config, base) if limit.name != PERPLEXITY]
    return tightened(limits, tighten, config.tasks)


# The objectives a weight applies to.
WEIGHTED = {"seconds": "time", "joules": "energy"}


def objective_weights(weights: Weights, names: Sequence[str]) -> dict[str, float]:
    """The weight of each of the study's weighted objectives (``seconds``, ``joules``),
    normalised over those the study minimises; empty when it minimises neither."""
    present = {name: getattr(weights, WEIGHTED[name]) for name in names if name in WEIGHTED}
    if not present:
        return {}
    total = sum(present.values())
    if total <= 0:
        missing = [n for n in WEIGHTED if n not in present]
        raise ConfigError(
            f"weights {weights.describe()} weigh only {', '.join(missing)}, which this study "
            f"does not minimise (its objectives: {', '.join(names)}); weigh "
            + " or ".join(WEIGHTED[n] for n in present)
        )
    return {name: w / total for name, w in present.items()}


@dataclass(frozen=True)
class Candidate:
    number: int
    values: dict[str, float]  # every objective of the study, by name
    normalised: dict[str, float]  # each weighted objective's relative excess over the best
    score: float
    recipe: Recipe
    energy_source: str
    is_base: bool
    cv: dict[str, float]  # each weighted objective's coefficient of variation over repeats
    tasks: dict[str, float] = field(default_factory=dict)  # every task's score, by name
    budgets: str = ""  # each limit beside perplexity, met or missed, with the figure

    @property
    def perplexity(self) -> float:
        return self.values["perplexity"]

    def noise(self, other: Candidate, weights: dict[str, float]) -> float:
        """The score gap to ``other`` that measurement noise alone can explain."""
        return sum(w * max(self.cv[n], other.cv[n]) for n, w in weights.items())

    def to_dict(self) -> dict[str, Any]:
        return {
            "trial": self.number,
            "score": self.score,
            "values": dict(self.values),
            "normalised": dict(self.normalised),
            "cv": dict(self.cv),
            "energy_source": self.energy_source,
            "is_base": self.is_base,
            "recipe": self.recipe.to_params(),
            "recipe_summary": self.recipe.describe(),
            "tasks": dict(self.tasks),
            "budgets": self.budgets,
        }


@dataclass(frozen=True)
class Choice:
    """The ranking of the candidates (best first) and why the first one won."""

    weights: Weights
    objective_weights: dict[str, float]  # what the score weighs, by objective name
    objectives: tuple[str, ...]
    budget: Budget
    ranking: tuple[Candidate, ...]
    reason: str
    # Trials within the budget kept out because their stored timing is untrusted, and why.
    held_back: dict[int, str] = field(default_factory=dict)
    retimed: tuple[int, ...] = ()  # the trials whose figures come from a side-by-side re-timing
    # False when the base model's own timing is held back: nothing then says any candidate
    # is faster than the base, so none is recommended until `pick --retime`.
    recommended: bool = True

    @property
    def best(self) -> Candidate:
        return self.ranking[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "objectives": list(self.objectives),
            "weights": {"time": self.weights.time, "energy": self.weights.energy},
            "objective_weights": dict(self.objective_weights),
            "budget": {
                "base_perplexity": self.budget.base_perplexity,
                "max_ppl_increase": self.budget.max_ppl_increase,
                "max_perplexity": self.budget.max_perplexity,
                "limits": [limit.text for limit in self.budget.limits],
            },
            "best_trial": self.best.number if self.recommended else None,
            "recommended": self.recommended,
            "reason": self.reason,
            "held_back": {str(n): why for n, why in self.held_back.items()},
            "retimed": list(self.retimed),
            "ranking": [c.to_dict() for c in self.ranking],
        }


def _normalise(values: list[float]) -> list[float]:
    """Relative excess over the smallest value (0 for it); 0 for all when it is not > 0."""
    best = min(values)
    if not best > 0:
        return [0.0 if v == best else math.inf for v in values]
    return [v / best - 1 for v in values]


def within(study: optuna.Study, budget: Budget) -> list[TrialRecord]:
    """The feasible COMPLETE trials that meet ``budget`` (and the study's stored
    constraints), by number."""
    return [
        r for r in read_trials(study, (TrialState.COMPLETE,)) if r.feasible and budget.admits(r)
    ]


def _front(study: optuna.Study, pool: list[TrialRecord]) -> list[TrialRecord]:
    """The Pareto-optimal trials of ``pool`` in the study's objectives (maximised ones
    negated)."""
    names = objective_names(study)
    mask = pareto_mask([minimised(study, r, names) for r in pool])
    return [r for r, keep in zip(pool, mask, strict=True) if keep]


def _with_retimed(trial: TrialRecord, figures: Retimed) -> TrialRecord:
    """The trial with its seconds (and joules, where metered per run) from the re-timing."""
    values = dict(trial.values)
    measurement = dict(trial.measurement)
    new = {"seconds": (figures.seconds, figures.seconds_cv)}
    if math.isfinite(figures.joules):
        new["joules"] = (figures.joules, figures.joules_cv)
    for name, (value, cv) in new.items():
        if name in values:
            values[name] = value
            measurement[f"{name}_cv"] = cv
    return replace(trial, values=values, measurement=measurement)


def candidates(
    study: optuna.Study, budget: Budget, retimed: Mapping[int, Retimed] | None = None
) -> list[TrialRecord]:
    """The Pareto-optimal trials within ``budget`` among those whose timing is trusted, by
    number: the ``retimed`` ones on their re-timed figures, else those whose stored timing
    is not flagged (:func:`untrusted_timing`)."""
    if retimed is not None:
        pool = [
            _with_retimed(r, retimed[r.number])
            for r in within(study, budget)
            if r.number in retimed
        ]
    else:
        pool = [r for r in within(study, budget) if not untrusted_timing(r)]
    return _front(study, pool)


def retime_numbers(
    study: optuna.Study,
    weights: Weights,
    max_ppl_increase: float | None = None,
    tighten: Mapping[str, float] | None = None,
    top: int = DEFAULT_TOP,
) -> list[int]:
    """What ``pick --retime`` re-times: the base trial, the ``top`` of the stored ranking,
    and the untrusted trials the front would hold if their timings stood."""
    budget = _budget(study, max_ppl_increase, tighten)
    pool = within(study, budget)
    numbers = [r.number for r in pool if r.is_base]
    with contextlib.suppress(ConfigError):  # no trusted candidate: the untrusted ones are
        ranking = rank(study, weights, max_ppl_increase, tighten).ranking
        numbers += [c.number for c in ranking[:top]]
    numbers += [r.number for r in _front(study, pool) if untrusted_timing(r)]
    return list(dict.fromkeys(numbers))


def _budget(
    study: optuna.Study,
    max_ppl_increase: float | None,
    tighten: Mapping[str, float] | None = None,
) -> Budget:
    budget = study_budget(study, max_ppl_increase, tighten)
    if budget is None:
        raise ConfigError(
            f"study {study.study_name!r} records no base_perplexity / max_ppl_increase, so it "
            "has no perplexity budget; it was not written by `autoslim search`, or its base "
            "model trial never finished: run the search again"
        )
    return budget


def rank(
    study: optuna.Study,
    weights: Weights,
    max_ppl_increase: float | None = None,
    tighten: Mapping[str, float] | None = None,
    retimed: Mapping[int, Retimed] | None = None,
) -> Choice:
    """Rank the Pareto-optimal trials within the budget by weighted time and energy, on
    trusted stored timings or on ``retimed`` figures (see the module doc); ``tighten``:
    budget flags, as for pick."""
    budget = _budget(study, max_ppl_increase, tighten)
    names = objective_names(study)
    if "perplexity" not in names:
        raise ConfigError(
            f"study {study.study_name!r} minimises {', '.join(names)}, not perplexity: pick "
            "ranks within a perplexity budget, so it needs a study that minimises perplexity"
        )
    weighted = objective_weights(weights, names)
    held_back = {}
    if retimed is None:
        held_back = {r.number: why for r in within(study, budget) if (why := untrusted_timing(r))}
    front = candidates(study, budget, retimed)
    if not front and held_back:  # nothing trusted: rank the stored figures, and say so
        front = _front(study, within(study, budget))
    if not front:
        raise ConfigError(_nothing_meets(study, budget))
    norms = {n: _normalise([r.values[n] for r in front]) for n in weighted}
    ranked = [
        _candidate(r, {n: norms[n][i] for n in weighted}, weighted, budget)
        for i, r in enumerate(front)
    ]
    by_score = sorted(ranked, key=lambda c: (c.score, c.perplexity, c.number))
    lowest = by_score[0]
    tied = [c for c in by_score if c.score - lowest.score <= c.noise(lowest, weighted)]
    winner = min(tied, key=lambda c: (c.perplexity, c.score, c.number))
    ranking = (winner, *(c for c in by_score if c is not winner))
    logger.info("ranked %d candidates under %s", len(ranking), budget.describe())
    base = None
    if weighted:  # a choice on time or energy: it needs the base's timing to mean anything
        base = next(
            (r for r in within(study, budget) if r.is_base and r.number in held_back), None
        )
    if base is not None:
        reason = _base_held_back(ranking, base, held_back[base.number], weighted)
    else:
        reason = _reason(ranking, lowest, weighted, budget) + _trust_note(
            ranking, weighted, held_back, retimed
        )
    return Choice(
        weights,
        weighted,
        names,
        budget,
        ranking,
        reason,
        held_back,
        tuple(sorted(retimed or ())),
        recommended=base is None,
    )


def _base_held_back(
    ranking: tuple[Candidate, ...], base: TrialRecord, why: str, weights: dict[str, float]
) -> str:
    """Why nothing is recommended while the base model's timing is untrusted, with the base's
    stored figure beside each candidate's."""

    def beside(c: Candidate) -> str:
        return ", ".join(
            f"{c.values[n]:.4g} {unit_of(n)} (base {base.values[n]:.4g})" for n in weights
        )

    shown = "; ".join(f"trial {c.number} ({c.recipe.describe()}) {beside(c)}" for c in ranking)
    return (
        f"no candidate can be recommended until the base model is re-timed: its own timing is "
        f"held back (trial {base.number}: {why}), so nothing here says any trial is faster than "
        f"it; run `autoslim pick --retime` to re-time them side by side. Stored figures: {shown}"
    )


def choose(
    study: optuna.Study,
    weights: Weights,
    max_ppl_increase: float | None = None,
    tighten: Mapping[str, float] | None = None,
    *,
    retime: bool = False,
) -> Choice:
    """:func:`rank` on stored timings, or (``retime``) re-time :func:`retime_numbers` side by
    side here first and rank on those figures."""
    if not retime:
        return rank(study, weights, max_ppl_increase, tighten)
    from autoslim.outputs import retime as retiming

    numbers = retime_numbers(study, weights, max_ppl_increase, tighten)
    logger.info("re-timing trials %s side by side", numbers)
    return rank(study, weights, max_ppl_increase, tighten, retiming.retime(study, numbers))


def _trust_note(
    ranking: tuple[Candidate, ...],
    weights: dict[str, float],
    held_back: dict[int, str],
    retimed: Mapping[int, Retimed] | None,
) -> str:
    """What the choice's timings rest on: held-back trials, the re-timing, noise vs the base."""
    text = ""
    shown = "; ".join(f"trial {n}: {why}" for n, why in sorted(held_back.items()))
    if held_back and ranking[0].number in held_back:
        text += (
            f". No candidate's timing can be trusted ({shown}), so these stored figures rank "
            "them anyway: `autoslim pick --retime` re-times them side by side before you rely "
            "on this choice"
        )
    elif held_back:
        text += (
            f". Kept out until re-timed ({shown}): `autoslim pick --retime` re-times them "
            "beside the top candidates and the base"
        )
    if retimed:
        some = next(iter(retimed.values()))
        busy = [n for n, f in retimed.items() if f.contended]
        text += (
            f". Figures from re-timing trials {', '.join(map(str, sorted(retimed)))} side by "
            f"side ({some.rounds} interleaved rounds)"
            + (
                f", trial(s) {', '.join(map(str, busy))} waited for a CPU meanwhile"
                if busy
                else ""
            )
        )
    best = ranking[0]
    base = next((c for c in ranking if c.is_base), None)
    if weights and base is not None and base is not best:
        gap = base.score - best.score
        if gap <= best.noise(base, weights):
            text += (
                f". Its advantage over the base model (score {gap:.3f}) is within measurement "
                f"noise ({best.noise(base, weights):.3f})"
            )
    elif weights and base is None and retimed is None:
        text += ". The base model is not among the candidates: nothing here says it is slower"
    return text


def _candidate(
    trial: TrialRecord, normalised: dict[str, float], weights: dict[str, float], budget: Budget
) -> Candidate:
    return Candidate(
        number=trial.number,
        values=dict(trial.values),
        normalised=normalised,
        score=sum(w * normalised[n] for n, w in weights.items()),
        recipe=trial.recipe,
        energy_source=str(trial.measurement.get("energy_source", "unknown")),
        is_base=trial.is_base,
        cv={n: _cv(trial.measurement.get(f"{n}_cv")) for n in weights},
        tasks={n: float(r["value"]) for n, r in trial.tasks.items()},
        budgets=budget.explain(trial),
    )


def _cv(value: Any) -> float:
    """A stored coefficient of variation; 0 (no noise allowance) when missing or not finite."""
    try:
        cv = float(value)
    except (TypeError, ValueError):
        return 0.0
    return cv if math.isfinite(cv) and cv > 0 else 0.0


def _nothing_meets(study: optuna.Study, budget: Budget) -> str:
    message = f"no completed trial of study {study.study_name!r} meets {budget.describe()}"
    complete = read_trials(study, (TrialState.COMPLETE,))
    if not complete:
        return message + "; the study has no completed trial yet: run the search first"
    within = [r for r in complete if budget.allows(r.perplexity)]
    if within and budget.limits:
        near = min(within, key=lambda r: (len(missed(budget.limits, r.figures)), r.number))
        return (
            f"{message}; of the {len(within)} within the perplexity budget, trial "
            f"{near.number} ({near.recipe.describe()}) comes closest: {budget.explain(near)}; "
            "loosen a budget flag (up to the study's own) or search again"
        )
    closest = min(complete, key=lambda r: (r.perplexity, r.number))
    increase = budget.increase(closest.perplexity)
    return (
        f"{message}; the closest is trial {closest.number} at perplexity "
        f"{closest.perplexity:.4g} ({increase:+.1%}, {closest.recipe.describe()}), which "
        f"needs a max_ppl_increase of {math.ceil(increase * 1000) / 1000:g}: loosen "
        "--max-ppl-increase (up to the study's own), or search again with a looser budget"
    )


def _reason(
    ranking: tuple[Candidate, ...],
    lowest: Candidate,
    weights: dict[str, float],
    budget: Budget,
) -> str:
    best = ranking[0]
    shown = ", ".join(f"{n}={w:g}" for n, w in weights.items())
    if not weights:
        how = "has the lowest perplexity (the study minimises neither seconds nor joules) of"
    elif best is lowest:
        how = f"has the lowest weighted score {best.score:.3f} of"
    else:
        how = (
            f"has the lowest perplexity of the trials whose weighted score is within measurement "
            f"noise of the lowest (its {best.score:.3f} against trial {lowest.number}'s "
            f"{lowest.score:.3f}, noise {best.noise(lowest, weights):.3f}), among"
        )
    figures = [
        f"{best.values[n]:.4g} {unit_of(n)} "
        f"(best candidate {min(c.values[n] for c in ranking):.4g}"
        + (f", {best.energy_source})" if n == "joules" else ")")
        for n in weights
    ]
    text = (
        f"trial {best.number} ({best.recipe.describe()}) {how} {len(ranking)} Pareto-optimal "
        f"trial(s) within the budget ({shown or 'no weights'}): "
        + "".join(f"{f}, " for f in figures)
        + f"perplexity {best.perplexity:.4g} ({budget.increase(best.perplexity):+.1%} over "
        f"base, limit {budget.max_perplexity:.4g})"
    )
    if best.budgets:
        text += f"; budgets: {best.budgets}"
    if len(ranking) > 1:
        runner_up = ranking[1]
        text += f"; runner-up trial {runner_up.number} scores {runner_up.score:.3f}"
        within_noise = runner_up.score - best.score <= runner_up.noise(best, weights)
        if weights and best is lowest and within_noise:
            text += " (within measurement noise, no lower perplexity)"
    return text
