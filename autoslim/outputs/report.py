"""The study report: one self-contained HTML page that works offline.

Objectives are read by name (:mod:`autoslim.search.trials`): a study may minimise any subset of
perplexity, seconds, joules, size_bytes and peak_memory_bytes, in any order.

Optuna's ``plot_param_importances`` (PED-ANOVA, every objective) draws that section.
Autoslim draws by hand what ``optuna.visualization`` cannot: the history of each objective
without the trials whose value cannot be drawn (a task skipped by the cheap-first rule scores
±inf; ``plot_optimization_history`` has no way to leave a trial out), with every limit on that
objective as a line, as the fronts and the parallel coordinates leave them out; the Pareto
front of each *pair* of objectives among the trials within the perplexity budget, with the
budget line (2D) or plane (3D) and the base model marked (``plot_pareto_front`` draws one set
of objectives with feasible/infeasible colours and a hover that dumps every attr); and the
parallel coordinates of the recipe knobs against *every* objective at once, read from each
trial's recipe record (``plot_parallel_coordinate`` colours one objective and leaves out
trials, like the base model's, that lack a sampled param). Those are pure *info* builders
(``get_*_info(study) -> small NamedTuple``) plus thin plotly renderers, as in Optuna's
``visualization/_pareto_front.py``: tests check the info, not pixels. Renderers escape every
string that reaches the page (study name, model id, recipes, fail reasons), and plotly's JSON
encoder escapes ``<`` in figure data. plotly.js is inlined once, so the page needs no network.
"""

from __future__ import annotations

import html
import itertools
import logging
import math
import statistics
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import optuna
from optuna.trial import TrialState

from autoslim import __version__
from autoslim.errors import ConfigError
from autoslim.objectives import unit_of
from autoslim.outputs.pick import Budget, rank, study_budget
from autoslim.outputs.retime import stored_retimings
from autoslim.outputs.weights import PRESETS
from autoslim.recipe import KNOBS, Recipe, format_heads
from autoslim.search.config import RunSection
from autoslim.search.storage import GRACE_BEATS, is_stale
from autoslim.search.trials import (
    TrialRecord,
    best_numbers,
    minimised,
    objective_names,
    pareto_mask,
    read_trials,
    stored_config,
)

logger = logging.getLogger(__name__)

# PED-ANOVA needs no scikit-learn; below this many completed trials it says nothing useful.
MIN_IMPORTANCE_TRIALS = 5


class Point(NamedTuple):
    number: int
    values: tuple[float, ...]
    label: str
    runtime: str = "torch"


class BudgetLine(NamedTuple):
    axis: str  # the objective it bounds
    value: float
    label: str


class ParetoInfo(NamedTuple):
    axis_names: tuple[str, ...]
    front: tuple[Point, ...]  # Pareto-optimal in these objectives, within the budget
    dominated: tuple[Point, ...]  # within the budget, not on that front
    over_budget: tuple[Point, ...]
    base: Point | None
    budget_perplexity: float | None  # the perplexity limit, marked where perplexity is an axis
    budget_lines: tuple[BudgetLine, ...] = ()  # every limit on an axis, perplexity's too


class Dimension(NamedTuple):
    label: str
    values: tuple[float, ...]
    tick_values: tuple[float, ...] | None  # set for categorical knobs, with tick_text
    tick_text: tuple[str, ...] | None


class ParallelInfo(NamedTuple):
    trial_numbers: tuple[int, ...]
    dimensions: tuple[Dimension, ...]  # varying recipe knobs, then the objectives
    color: tuple[float, ...]  # perplexity
    constant_knobs: tuple[str, ...]  # knobs with one value in every trial, left out
    left_out: tuple[int, ...] = ()  # completed trials with an objective that cannot be drawn


class HistoryInfo(NamedTuple):
    objective: str
    maximize: bool
    feasible: tuple[Point, ...]  # completed trials that meet every constraint, by number
    infeasible: tuple[Point, ...]
    best: tuple[tuple[int, float], ...]  # the best feasible value so far, at each trial
    left_out: tuple[int, ...]  # completed trials whose value cannot be drawn (±inf)
    budget_lines: tuple[BudgetLine, ...]  # every limit on the objective


class TableRow(NamedTuple):
    number: int
    state: str
    recipe: str
    values: dict[str, float]  # objective name → value; empty unless COMPLETE
    energy_source: str
    flags: str  # the measurement's energy and timing flags
    size_bytes: int | None
    on_front: bool
    within_budget: bool | None
    is_base: bool
    reason: str  # fail_reason / prune_reason
    tasks: dict[str, float]  # every task's score, by name
    budgets: str  # the limits it missed; whether its tasks were skipped


class TableInfo(NamedTuple):
    objective_names: tuple[str, ...]
    rows: tuple[TableRow, ...]
    task_names: tuple[str, ...] = ()  # tasks that are not objectives, shown beside them


class TaskSavings(NamedTuple):
    """What evaluating tasks cheap-first saved: evaluations skipped because a cheaper budget
    was already missed, evaluations run, and the task seconds the skipped ones would have
    taken (the median of those run)."""

    skipped: int
    evaluated: int
    seconds_saved: float


class RuntimePhases(NamedTuple):
    """A runtime's fastest feasible trial per phase (tokens/s; NaN where none measured it)."""

    runtime: str
    prefill_tokens_per_second: float
    prefill_trial: int
    decode_tokens_per_second: float
    decode_trial: int


class SummaryInfo(NamedTuple):
    study_name: str
    model: str
    corpus_fingerprint: str
    seed: str
    objective_names: tuple[str, ...]
    budget: Budget | None
    state_counts: tuple[tuple[str, int], ...]
    n_front: int
    energy_sources: tuple[str, ...]
    # Completed trials whose timing is flagged (cpu_contended: measured on a busy CPU), and
    # the flags seen.
    timing_flagged: tuple[int, tuple[str, ...]]
    choice: str  # the balanced pick and why, or why there is none
    # RUNNING trials whose heartbeat stopped (their process is gone): not "running".
    stalled: int = 0
    stale_seconds: float = 0.0
    limits: tuple[tuple[str, int], ...] = ()  # each limit beside perplexity, trials it excludes
    task_savings: TaskSavings | None = None  # None when the study has no tasks
    # per runtime with feasible, trusted trials: its fastest prefill and decode tokens/s
    runtime_phases: tuple[RuntimePhases, ...] = ()


def _label(trial: TrialRecord) -> str:
    return f"{trial.recipe.describe()} (trial {trial.number})"


def _point(trial: TrialRecord, objectives: Sequence[str]) -> Point:
    values = tuple(trial.values[n] for n in objectives)
    return Point(trial.number, values, _label(trial), trial.recipe.runtime)


def _budget_limit(budget: Budget | None) -> float | None:
    return None if budget is None else budget.max_perplexity


def _within(budget: Budget | None, trial: TrialRecord) -> bool:
    """Whether ``trial`` meets the perplexity budget and every other limit of the study."""
    return budget is None or budget.admits(trial)


def _finite(trial: TrialRecord, names: Sequence[str]) -> bool:
    """Whether every value in ``names`` can be drawn (a task skipped by the cheap-first rule
    scores infinitely badly)."""
    return all(math.isfinite(trial.values[n]) for n in names)


def _budget_lines(budget: Budget | None, axes: Sequence[str]) -> tuple[BudgetLine, ...]:
    """Every limit on one of ``axes``: the perplexity budget and each budget or task limit."""
    if budget is None:
        return ()
    lines = [BudgetLine("perplexity", budget.max_perplexity, "perplexity budget")]
    lines += [BudgetLine(lim.figure, lim.value, lim.text) for lim in budget.limits]
    return tuple(line for line in lines if line.axis in axes)


def _complete(study: optuna.Study) -> list[TrialRecord]:
    return read_trials(study, (TrialState.COMPLETE,))


def objective_sets(study: optuna.Study) -> list[tuple[str, ...]]:
    """The objective sets the report draws fronts of: every pair, then all three when the
    study has exactly three."""
    names = objective_names(study)
    sets: list[tuple[str, ...]] = list(itertools.combinations(names, 2))
    return [*sets, names] if len(names) == 3 else sets


def get_pareto_info(study: optuna.Study, objectives: Sequence[str]) -> ParetoInfo:
    """The front of ``objectives`` (2 or 3 of the study's objective names)."""
    names = objective_names(study)
    if not 2 <= len(objectives) <= 3 or not set(objectives) <= set(names):
        raise ConfigError(
            f"objectives={list(objectives)}: choose 2 or 3 of the study's {', '.join(names)}"
        )
    budget = study_budget(study)
    complete = [t for t in _complete(study) if _finite(t, objectives)]
    within = [t for t in complete if _within(budget, t)]
    on_front = pareto_mask([minimised(study, t, objectives) for t in within])
    base = next((t for t in complete if t.is_base), None)
    pairs = list(zip(within, on_front, strict=True))
    return ParetoInfo(
        axis_names=tuple(objectives),
        front=tuple(_point(t, objectives) for t, f in pairs if f),
        dominated=tuple(_point(t, objectives) for t, f in pairs if not f),
        over_budget=tuple(_point(t, objectives) for t in complete if not _within(budget, t)),
        base=None if base is None else _point(base, objectives),
        budget_perplexity=_budget_limit(budget) if "perplexity" in objectives else None,
        budget_lines=_budget_lines(budget, objectives),
    )


def _knob_value(recipe: Recipe, name: str) -> Any:
    value = getattr(recipe, name)
    return format_heads(value) if name == "drop_heads" else value


def _drawable(study: optuna.Study, names: Sequence[str]) -> tuple[list[TrialRecord], list[int]]:
    """The completed trials whose values in ``names`` can be drawn, and the numbers of those
    left out."""
    complete = _complete(study)
    drawn = [t for t in complete if _finite(t, names)]
    return drawn, [t.number for t in complete if not _finite(t, names)]


def get_parallel_info(study: optuna.Study) -> ParallelInfo:
    """Recipe knobs that vary across the completed trials, then the study's objectives (the
    trials with an objective that cannot be drawn left out)."""
    complete, left_out = _drawable(study, objective_names(study))
    recipes = [t.recipe for t in complete]
    dimensions: list[Dimension] = []
    constant: list[str] = []
    for knob in KNOBS:
        raw = [_knob_value(r, knob) for r in recipes]
        if len(set(raw)) <= 1:
            constant.append(knob)
            continue
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in raw):
            dimensions.append(Dimension(knob, tuple(float(v) for v in raw), None, None))
            continue
        categories = sorted({str(v) for v in raw})
        dimensions.append(
            Dimension(
                knob,
                tuple(float(categories.index(str(v))) for v in raw),
                tuple(float(i) for i in range(len(categories))),
                tuple(c or "none" for c in categories),
            )
        )
    for name in objective_names(study):
        dimensions.append(Dimension(name, tuple(t.values[name] for t in complete), None, None))
    return ParallelInfo(
        trial_numbers=tuple(t.number for t in complete),
        dimensions=tuple(dimensions),
        color=tuple(t.perplexity for t in complete),
        constant_knobs=tuple(constant),
        left_out=tuple(left_out),
    )


def get_history_info(study: optuna.Study, name: str) -> HistoryInfo:
    """The objective ``name`` of each completed trial whose value can be drawn, by trial
    number, feasible or not, with the best feasible value so far."""
    names = objective_names(study)
    if name not in names:
        raise ConfigError(f"objective={name!r}: choose one of the study's {', '.join(names)}")
    drawn, left_out = _drawable(study, (name,))
    maximize = study.directions[names.index(name)] == optuna.study.StudyDirection.MAXIMIZE
    best: list[tuple[int, float]] = []
    for t in sorted(drawn, key=lambda r: r.number):
        if t.feasible:
            value = t.values[name]
            if best:
                value = max(value, best[-1][1]) if maximize else min(value, best[-1][1])
            best.append((t.number, value))
        elif best:
            best.append((t.number, best[-1][1]))
    return HistoryInfo(
        objective=name,
        maximize=maximize,
        feasible=tuple(_point(t, (name,)) for t in drawn if t.feasible),
        infeasible=tuple(_point(t, (name,)) for t in drawn if not t.feasible),
        best=tuple(best),
        left_out=tuple(left_out),
        budget_lines=_budget_lines(study_budget(study), (name,)),
    )


def get_table_info(study: optuna.Study) -> TableInfo:
    """One row per trial, every state, with its recipe, figures and the reason it stopped."""
    budget = study_budget(study)
    front = best_numbers(study)
    rows = []
    trials = read_trials(study)
    objectives = objective_names(study)
    tasks = sorted({n for t in trials for n in t.tasks} - set(objectives))
    for trial in trials:
        measurement = trial.measurement
        missing = [] if budget is None or not trial.complete else budget.limits
        misses = "; ".join(
            m.explain(trial.figures) for m in missing if not m.allows(trial.figures)
        )
        rows.append(
            TableRow(
                number=trial.number,
                state=trial.state.name,
                recipe=trial.recipe.describe(),
                values=dict(trial.values),
                energy_source=str(measurement.get("energy_source", "")),
                flags=", ".join(
                    str(flag)
                    for key in ("energy_flags", "timing_flags")
                    for flag in measurement.get(key, [])
                ),
                size_bytes=measurement.get("size_bytes"),
                on_front=trial.number in front and _within(budget, trial),
                within_budget=_within(budget, trial) if trial.complete and budget else None,
                is_base=trial.is_base,
                reason=trial.reason,
                tasks={n: float(r["value"]) for n, r in trial.tasks.items()},
                budgets="; ".join(filter(None, (misses, trial.tasks_skipped and "tasks skipped"))),
            )
        )
    return TableInfo(objectives, tuple(rows), tuple(tasks))


def task_savings(trials: Sequence[TrialRecord]) -> TaskSavings:
    run = [sum(float(r.get("seconds", 0.0)) for r in t.tasks.values()) for t in trials if t.tasks]
    skipped = sum(bool(t.tasks_skipped) for t in trials)
    saved = skipped * statistics.median(run) if run else 0.0
    return TaskSavings(skipped, len(run), saved)


def get_summary_info(study: optuna.Study) -> SummaryInfo:
    attrs = study.user_attrs
    budget = study_budget(study)
    trials = read_trials(study)
    complete = [t for t in trials if t.complete]
    counts = Counter(t.state.name for t in trials)
    sources = sorted({str(t.measurement.get("energy_source", "unknown")) for t in complete})
    try:
        # On the latest side-by-side re-timing where `pick --retime` stored one; else the
        # trusted stored timings (the reason names the trials held back either way).
        choice = rank(study, PRESETS["balanced"], retimed=stored_retimings(study) or None).reason
    except ConfigError as e:
        choice = f"no pick: {e}"
    front = best_numbers(study)
    flagged = [[str(f) for f in t.measurement.get("timing_flags", [])] for t in complete]
    flagged = [flags for flags in flagged if flags]
    now = time.time()
    try:
        beat = stored_config(study).study.heartbeat_seconds
    except ConfigError:  # a study autoslim did not write: the default beat
        beat = RunSection.heartbeat_seconds
    stalled = sum(
        is_stale(t, beat, now)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    )
    return SummaryInfo(
        study_name=study.study_name,
        model=str(attrs.get("model", "unknown")),
        corpus_fingerprint=str(attrs.get("corpus_fingerprint", "unknown")),
        seed=str(attrs.get("seed", "unknown")),
        objective_names=objective_names(study),
        budget=budget,
        state_counts=tuple(sorted(counts.items())),
        n_front=sum(t.number in front and _within(budget, t) for t in complete),
        energy_sources=tuple(sources),
        timing_flagged=(len(flagged), tuple(sorted({f for t in flagged for f in t}))),
        choice=choice,
        stalled=stalled,
        stale_seconds=GRACE_BEATS * beat,
        limits=tuple(
            (lim.text, sum(not lim.allows(t.figures) for t in complete))
            for lim in (budget.limits if budget else ())
        ),
        task_savings=task_savings(trials) if _has_tasks(study) else None,
        runtime_phases=runtime_phases(
            [t for t in complete if _within(budget, t) and not t.measurement.get("timing_flags")]
        ),
    )


def runtime_phases(trials: Sequence[TrialRecord]) -> tuple[RuntimePhases, ...]:
    """Each runtime's fastest of ``trials`` in prefill and in decode (tokens per second)."""
    out = []
    for runtime in sorted({t.recipe.runtime for t in trials}, key=_runtime_order):
        own = [t for t in trials if t.recipe.runtime == runtime]
        best = {}
        for phase in ("prefill_tokens_per_second", "decode_tokens_per_second"):
            rates = [(float(t.measurement.get(phase, math.nan)), t.number) for t in own]
            rates = [r for r in rates if r[0] == r[0]]
            best[phase] = max(rates) if rates else (math.nan, -1)
        out.append(
            RuntimePhases(
                runtime,
                *best["prefill_tokens_per_second"],
                *best["decode_tokens_per_second"],
            )
        )
    return tuple(out)


def phase_winners(phases: Sequence[RuntimePhases]) -> list[str]:
    """Which runtime is fastest in each phase on this machine, and by how much over the next."""
    lines = []
    for label, rate, trial in (
        ("prefill", "prefill_tokens_per_second", "prefill_trial"),
        ("decode", "decode_tokens_per_second", "decode_trial"),
    ):
        ranked = sorted(
            (p for p in phases if getattr(p, rate) == getattr(p, rate)),
            key=lambda p: -getattr(p, rate),
        )
        if not ranked:
            continue
        first = ranked[0]
        text = (
            f"{label}: {first.runtime} fastest, {getattr(first, rate):,.1f} tokens/s "
            f"(trial {getattr(first, trial)})"
        )
        if len(ranked) > 1:
            second = ranked[1]
            text += (
                f", {getattr(first, rate) / getattr(second, rate):.2f}x {second.runtime}'s "
                f"{getattr(second, rate):,.1f} (trial {getattr(second, trial)})"
            )
        lines.append(text)
    return lines


def empty_notice(info: SummaryInfo) -> str | None:
    """What to say when the study has no completed trial (there is nothing to plot)."""
    if dict(info.state_counts).get("COMPLETE"):
        return None
    return (
        f"study {info.study_name!r} has no completed trial yet ({_counts(info)}), so there is "
        "no front, knob plot or pick to show; run `autoslim search` on its study file to "
        "continue it"
    )


def _counts(info: SummaryInfo) -> str:
    parts = []
    for state, n in info.state_counts:
        if state == "RUNNING" and info.stalled:
            parts.append(
                f"{info.stalled} stopped without finishing (no heartbeat for over "
                f"{info.stale_seconds:.0f} s; the next search marks it FAIL)"
            )
            n -= info.stalled
        if n:
            parts.append(f"{n} {state.lower()}")
    return ", ".join(parts) or "no trials"


def _has_tasks(study: optuna.Study) -> bool:
    stored = study.user_attrs.get("config")
    return isinstance(stored, dict) and bool(stored.get("tasks"))


# --- renderers --------------------------------------------------------------------------------


def _axis_title(name: str) -> str:
    return f"{name} ({unit_of(name)})" if unit_of(name) else name


def _hover(point: Point, names: Sequence[str]) -> str:
    figures = "<br>".join(
        f"{n} {v:.4g} {unit_of(n)}".rstrip() for n, v in zip(names, point.values, strict=True)
    )
    return f"{html.escape(point.label)}<br>{figures}"


# Marker shapes of the runtimes on a front, in the order they are declared.
RUNTIME_SYMBOLS = ("circle", "square", "cross", "circle-open")  # shapes 2D and 3D both draw


def _runtime_order(name: str) -> int:
    from autoslim.runtimes import RUNTIMES

    order = list(RUNTIMES)
    return order.index(name) if name in order else len(order)


def plot_pareto(info: ParetoInfo) -> Any:
    import plotly.graph_objects as go

    three_d = len(info.axis_names) == 3
    scatter = go.Scatter3d if three_d else go.Scatter
    # the front and the dominated trials split by runtime, one marker shape each
    runtimes = sorted({p.runtime for p in (*info.front, *info.dominated)}, key=_runtime_order)
    split = len(runtimes) > 1
    groups = [
        (
            f"{label} ({runtime})" if split else label,
            [p for p in points if p.runtime == runtime],
            color,
            RUNTIME_SYMBOLS[_runtime_order(runtime) % len(RUNTIME_SYMBOLS)],
        )
        for label, points, color in (
            ("Pareto front", sorted(info.front, key=lambda p: p.values), "#1f77b4"),
            ("dominated", info.dominated, "#aaaaaa"),
        )
        for runtime in runtimes
    ]
    groups += [
        ("over the perplexity budget", list(info.over_budget), "#d62728", "x"),
        ("base model", [info.base] if info.base else [], "#2ca02c", "diamond"),
    ]
    fig = go.Figure()
    for name, points, color, symbol in groups:
        coords = {
            axis: [p.values[k] for p in points]
            for k, axis in enumerate(("x", "y", "z")[: len(info.axis_names)])
        }
        line = name.startswith("Pareto front") and not three_d
        fig.add_trace(
            scatter(
                **coords,
                name=name,
                mode="lines+markers" if line else "markers",
                text=[_hover(p, info.axis_names) for p in points],
                hovertemplate="%{text}<extra></extra>",
                marker={"color": color, "symbol": symbol, "size": 6 if three_d else 10},
                line={"shape": "hv", "dash": "dot"} if line else None,
            )
        )
    title = " vs ".join(info.axis_names)
    if three_d:
        fig.update_layout(
            scene={
                f"{a}axis_title": _axis_title(n)
                for a, n in zip(("x", "y", "z"), info.axis_names, strict=True)
            }
        )
        if info.budget_perplexity is not None and (info.front or info.over_budget):
            fig.add_trace(_budget_plane(info))
    else:
        fig.update_layout(
            xaxis_title=_axis_title(info.axis_names[0]),
            yaxis_title=_axis_title(info.axis_names[1]),
        )
        for budget_line in info.budget_lines:
            add = fig.add_vline if info.axis_names[0] == budget_line.axis else fig.add_hline
            add(
                budget_line.value,
                line_dash="dash",
                line_color="#d62728",
                annotation_text=html.escape(budget_line.label),
            )
    fig.update_layout(title=f"Pareto front: {title}", height=520 if three_d else 420)
    return fig


def _budget_plane(info: ParetoInfo) -> Any:
    import plotly.graph_objects as go

    limit = info.budget_perplexity
    everything = (*info.front, *info.dominated, *info.over_budget)
    axis = info.axis_names.index("perplexity")
    others = [k for k in range(3) if k != axis]
    spans = [
        (min(p.values[k] for p in everything), max(p.values[k] for p in everything))
        for k in others
    ]
    corners = [(a, b) for a in spans[0] for b in spans[1]]
    xyz: list[list[float]] = [[], [], []]
    for a, b in corners:
        xyz[axis].append(float(limit or 0.0))
        xyz[others[0]].append(a)
        xyz[others[1]].append(b)
    return go.Mesh3d(
        x=xyz[0],
        y=xyz[1],
        z=xyz[2],
        i=[0, 1],
        j=[1, 3],
        k=[2, 2],
        opacity=0.2,
        color="#d62728",
        name="perplexity budget",
        hoverinfo="name",
        showlegend=True,
    )


def plot_parallel(info: ParallelInfo) -> Any:
    import plotly.graph_objects as go

    dims = [
        {
            "label": d.label,
            "values": list(d.values),
            **(
                {"tickvals": list(d.tick_values), "ticktext": list(d.tick_text or ())}
                if d.tick_values is not None
                else {}
            ),
        }
        for d in info.dimensions
    ]
    fig = go.Figure(
        go.Parcoords(
            line={
                "color": list(info.color),
                "colorscale": "Viridis",
                "showscale": True,
                "colorbar": {"title": {"text": "perplexity"}},
            },
            dimensions=dims,
        )
    )
    title = "Recipe knobs against objectives"
    if info.constant_knobs:
        title += f" (constant, not shown: {', '.join(info.constant_knobs)})"
    title += _left_out_note(info.left_out)
    fig.update_layout(title=html.escape(title), height=460)
    return fig


def _note_figure(title: str, note: str) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_annotation(text=html.escape(note), showarrow=False, font={"size": 14})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(title=title, height=200)
    return fig


def plot_importances(study: optuna.Study) -> Any:
    """Optuna's PED-ANOVA importance of each sampled param, one bar group per objective."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    sampled = [t for t in complete if t.params]
    if len(sampled) < MIN_IMPORTANCE_TRIALS:
        return _note_figure(
            "Parameter importances",
            f"parameter importances need at least {MIN_IMPORTANCE_TRIALS} completed trials "
            f"with sampled params; this study has {len(sampled)}",
        )
    try:
        with warnings.catch_warnings():
            # PED-ANOVA warns that it rates params for low targets: all ours are minimised.
            warnings.simplefilter("ignore", UserWarning)
            fig = optuna.visualization.plot_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator()
            )
    except (ValueError, RuntimeError) as e:
        logger.info("parameter importances unavailable: %s", e)
        return _note_figure("Parameter importances", f"parameter importances unavailable: {e}")
    fig.update_layout(
        title=f"Parameter importances: Optuna PED-ANOVA over {len(sampled)} completed trials "
        "(rough below ~30)",
        height=420,
    )
    return fig


def _left_out_note(numbers: Sequence[int]) -> str:
    if not numbers:
        return ""
    return f" (not drawn, tasks skipped: trial {', '.join(str(n) for n in numbers)})"


def plot_history(info: HistoryInfo) -> Any:
    """Each trial's value of one objective by trial number, the best feasible value so far,
    and every limit on it."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for label, points, color in (
        ("objective value", info.feasible, "#1f77b4"),
        ("infeasible trial", info.infeasible, "#cccccc"),
    ):
        fig.add_trace(
            go.Scatter(
                x=[p.number for p in points],
                y=[p.values[0] for p in points],
                mode="markers",
                name=label,
                marker={"color": color},
                text=[_hover(p, (info.objective,)) for p in points],
                hoverinfo="text",
            )
        )
    fig.add_trace(
        go.Scatter(
            x=[n for n, _ in info.best],
            y=[v for _, v in info.best],
            mode="lines",
            name="best value",
            line={"color": "#ff7f0e"},
        )
    )
    for line in info.budget_lines:
        fig.add_hline(
            line.value,
            line_dash="dash",
            line_color="#d62728",
            annotation_text=html.escape(line.label),
        )
    title = f"History of {info.objective}" + _left_out_note(info.left_out)
    fig.update_layout(
        title=html.escape(title),
        xaxis_title="trial",
        yaxis_title=_axis_title(info.objective),
        height=360,
    )
    return fig


def _cell(value: Any) -> str:
    if value is None:
        return '<td data-sort=""></td>'
    shown = f"{value:.4g}" if isinstance(value, float) else str(value)
    key = html.escape(str(value), quote=True)
    return f'<td data-sort="{key}">{html.escape(shown)}</td>'


def render_table(info: TableInfo) -> str:
    headers = (
        "trial",
        "state",
        "recipe",
        *info.objective_names,
        *info.task_names,
        "energy source",
        "measurement flags",
        "size (MB)",
        "Pareto",
        "within budget",
        "budgets missed",
        "fail / prune reason",
    )
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = []
    for r in info.rows:
        size = None if r.size_bytes is None else round(r.size_bytes / 1e6, 2)
        budget = None if r.within_budget is None else ("yes" if r.within_budget else "no")
        cells = (
            _cell(r.number),
            _cell(r.state),
            _cell(r.recipe + (" [base]" if r.is_base else "")),
            *(_cell(r.values.get(n)) for n in info.objective_names),
            *(_cell(r.tasks.get(n)) for n in info.task_names),
            _cell(r.energy_source),
            _cell(r.flags),
            _cell(size),
            _cell("yes" if r.on_front else ""),
            _cell(budget),
            _cell(r.budgets),
            _cell(r.reason),
        )
        row_class = ' class="front"' if r.on_front else ""
        body.append(f"<tr{row_class}>{''.join(cells)}</tr>")
    return (
        f'<table id="trials" class="sortable"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def render_summary(info: SummaryInfo) -> str:
    e = html.escape
    budget = info.budget.describe() if info.budget else "unknown (no base perplexity stored)"
    counts = _counts(info)
    rows = (
        ("model", info.model),
        ("objectives", ", ".join(info.objective_names)),
        ("perplexity budget", budget),
        *((f"budget {text}", f"excludes {n} completed trial(s)") for text, n in info.limits),
        *(
            (
                (
                    "task evaluations (cheap first)",
                    f"{s.evaluated} run, {s.skipped} skipped on trials already over a cheaper "
                    f"budget (about {s.seconds_saved:.0f} s saved)",
                ),
            )
            if (s := info.task_savings)
            else ()
        ),
        ("trials", counts),
        ("Pareto-optimal within budget", str(info.n_front)),
        ("energy source(s)", ", ".join(info.energy_sources) or "none"),
        (
            "timing flags",
            f"{info.timing_flagged[0]} trial(s): {', '.join(info.timing_flagged[1])} (measured "
            "while waiting for a CPU: seconds and joules inflated); kept out of the pick below "
            "until re-timed side by side with `autoslim pick --retime`"
            if info.timing_flagged[0]
            else "none",
        ),
        *(
            (("runtimes (feasible, trusted timings)", "; ".join(winners)),)
            if (winners := phase_winners(info.runtime_phases))
            else ()
        ),
        ("corpus fingerprint", info.corpus_fingerprint),
        ("seed", info.seed),
        ("balanced pick", info.choice),
    )
    cells = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows)
    return f'<table class="summary">{cells}</table>'


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.5em; }
table { border-collapse: collapse; font-size: 0.85em; }
td, th { border: 1px solid #ddd; padding: 3px 6px; text-align: left; vertical-align: top; }
table.sortable th { cursor: pointer; background: #f3f3f3; }
tr.front td { background: #eef5fc; }
"""

_SORT_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function (th, col) {
  th.addEventListener("click", function () {
    var body = th.closest("table").tBodies[0];
    var asc = th.dataset.order !== "asc";
    th.dataset.order = asc ? "asc" : "desc";
    var key = function (row) {
      var v = row.cells[col].dataset.sort, n = parseFloat(v);
      return v === "" ? null : (isNaN(n) ? v : n);
    };
    Array.from(body.rows).sort(function (a, b) {
      var x = key(a), y = key(b);
      if (x === null || y === null) { return x === y ? 0 : (x === null ? 1 : -1); }
      return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
    }).forEach(function (row) { body.appendChild(row); });
  });
});
"""


def _figure_div(fig: Any, div_id: str) -> str:
    html_div: str = fig.to_html(
        full_html=False,
        include_plotlyjs=False,
        div_id=div_id,
        config={"displaylogo": False, "responsive": True},
    )
    return html_div


def render_page(study: optuna.Study) -> str:
    """The whole report page for ``study`` as one HTML string."""
    import plotly.offline

    summary = get_summary_info(study)
    title = html.escape(f"autoslim report: {summary.study_name}")
    notice = empty_notice(summary)
    if notice is not None:  # no figure to draw: no 4.9 MB of plotly for empty axes
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{title}</title><style>{_STYLE}</style></head>"
            f'<body><h1>{title}</h1><p class="notice"><strong>{html.escape(notice)}</strong>'
            f"</p>{render_summary(summary)}<h2>Trials</h2>"
            f"{render_table(get_table_info(study))}</body></html>\n"
        )
    fronts = [
        _figure_div(plot_pareto(get_pareto_info(study, names)), "pareto-" + "-".join(names))
        for names in objective_sets(study)
    ]
    histories = [
        _figure_div(plot_history(get_history_info(study, name)), f"history-{name}")
        for name in summary.objective_names
    ]
    sections = [
        ("Pareto fronts", "".join(fronts)),
        ("Recipe knobs", _figure_div(plot_parallel(get_parallel_info(study)), "parallel")),
        ("Parameter importances", _figure_div(plot_importances(study), "importances")),
        ("Objective history", "".join(histories)),
        ("Trials (click a header to sort)", render_table(get_table_info(study))),
    ]
    body = "".join(f"<h2>{html.escape(h)}</h2>{content}" for h, content in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title><style>{_STYLE}</style>"
        f"<script>{plotly.offline.get_plotlyjs()}</script></head>"
        f"<body><h1>{title}</h1>{render_summary(summary)}{body}"
        f"<p><small>autoslim {html.escape(__version__)}, optuna "
        f"{html.escape(optuna.__version__)}; works offline.</small></p>"
        f"<script>{_SORT_SCRIPT}</script></body></html>\n"
    )


def _is_page(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(15).lower() == b"<!doctype html>"


def write_report(study: optuna.Study, path: str | Path) -> Path:
    """Write the report page to ``path`` (its folder is created); returns the path."""
    out = Path(path)
    if out.is_dir():
        raise ConfigError(f"report path {str(out)!r} is a folder; give a file name ending .html")
    if out.is_file() and not _is_page(out):
        raise ConfigError(
            f"report path {str(out)!r} exists and is not an HTML page (a study file or "
            "storage?); it is not overwritten: give a new file name ending .html"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_page(study), encoding="utf-8")
    logger.info("wrote the report of %s to %s", study.study_name, out)
    return out
