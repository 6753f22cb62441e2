"""Timings a choice can trust: which stored ones are not, and re-timing side by side.

A trial's stored seconds were measured whenever the search reached it, on whatever else the
machine was running then: the base at a busy moment and a candidate at a quiet one can swap
their order. :func:`untrusted_timing` names what makes a stored timing untrustworthy (the
``cpu_contended`` flag, or a seconds CV above ``MAX_SECONDS_CV``); :mod:`autoslim.outputs.pick`
keeps such trials off the front and out of the choice until they are re-timed.

:func:`retime` rebuilds the given trials (the top candidates and the base) in this process and
times their workload **interleaved**: every round runs each model once, in an order that rotates
each round, so a slow moment of the machine costs every model alike and the figures compare the
models, not the moments. Each gets the median seconds (and joules) of its rounds, their CV and
the CPU wait; they are stored in the study's ``retimed`` user attr (trial number → figures,
with the trials they were timed beside). ``autoslim pick --retime`` ranks with those figures.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import optuna

from autoslim import progress
from autoslim.search.trials import TrialRecord

logger = logging.getLogger(__name__)

# A stored timing whose repeats vary more than this (seconds CV) is not trusted.
MAX_SECONDS_CV = 0.10
CONTENDED = "cpu_contended"  # autoslim.measure.measurement.CONTENDED, without importing torch
RETIMED_ATTR = "retimed"
# Candidates from the top of the stored ranking that `pick --retime` re-times (plus the base).
DEFAULT_TOP = 3


def untrusted_timing(trial: TrialRecord) -> str:
    """Why the trial's stored timing cannot be trusted ("" when it can)."""
    flags = trial.measurement.get("timing_flags") or []
    if CONTENDED in flags:
        return f"{CONTENDED} (waited {_wait(trial.measurement)} for a CPU while timed)"
    cv = trial.measurement.get("seconds_cv")
    if isinstance(cv, int | float) and cv > MAX_SECONDS_CV:
        return f"seconds CV {cv:.0%} > {MAX_SECONDS_CV:.0%}"
    return ""


def _wait(measurement: Mapping[str, Any]) -> str:
    wait = measurement.get("cpu_wait_fraction")
    return f"{wait:.0%}" if isinstance(wait, int | float) else "long"


@dataclass(frozen=True)
class Retimed:
    """One trial's figures from a side-by-side re-timing."""

    number: int
    seconds: float
    seconds_cv: float
    joules: float
    joules_cv: float
    seconds_samples: tuple[float, ...]
    cpu_wait_fraction: float | None
    beside: tuple[int, ...]  # the trials timed in the same rounds
    rounds: int

    @property
    def contended(self) -> bool:
        from autoslim.measure.measurement import CONTENDED_FRACTION

        wait = self.cpu_wait_fraction
        return wait is not None and wait > CONTENDED_FRACTION

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["seconds_samples"] = list(self.seconds_samples)
        out["beside"] = list(self.beside)
        return out


def retime(
    study: optuna.Study,
    numbers: Sequence[int],
    *,
    rounds: int | None = None,
    store: bool = True,
) -> dict[int, Retimed]:
    """Rebuild ``numbers`` (COMPLETE trials of ``study``) here and time them interleaved for
    ``rounds`` rounds (default: the study's workload repeats); store each as ``retimed``.
    Reports its stages through :mod:`autoslim.progress`."""
    import contextlib

    import torch

    from autoslim.measure.energy import get_meter
    from autoslim.measure.workload import WorkloadRunner, cv
    from autoslim.pipeline import Pipeline
    from autoslim.search.trials import read_trials, stored_config

    config = stored_config(study)
    records = {r.number: r for r in read_trials(study)}
    chosen = list(dict.fromkeys(numbers))
    pipeline = Pipeline.for_study(study, config)
    workload = pipeline.workload
    rounds = rounds or workload.repeats
    ids = pipeline.eval_ids()
    dev = torch.device(config.model.device)
    runners = {}
    seconds: dict[int, list[float]] = {n: [] for n in chosen}
    joules: dict[int, list[float | None]] = {n: [] for n in chosen}
    waited: dict[int, list[float | None]] = {n: [] for n in chosen}
    with contextlib.ExitStack() as models:
        for number in chosen:
            logger.info("rebuilding trial %d for re-timing", number)
            progress.report(f"rebuild trial {number}")
            built = models.enter_context(pipeline.built(records[number].recipe))
            runners[number] = WorkloadRunner(built.model, ids, workload)
        threads_before = torch.get_num_threads()
        if workload.threads:
            torch.set_num_threads(workload.threads)
        meter = get_meter("auto", device=dev)
        try:
            for runner in runners.values():
                for _ in range(workload.warmup):
                    runner.run()
            for r in range(rounds):
                order = chosen[r % len(chosen) :] + chosen[: r % len(chosen)]
                for number in order:
                    run = runners[number].timed(meter)
                    seconds[number].append(run.seconds)
                    joules[number].append(run.energy.joules)
                    waited[number].append(run.waited_seconds)
                progress.report("interleaved rounds", r + 1, rounds)
        finally:
            meter.close()
            torch.set_num_threads(threads_before)
    out = {}
    for number in chosen:
        samples = seconds[number]
        metered = [j for j in joules[number] if j is not None]
        waits = waited[number]
        wait = (
            sum(w for w in waits if w is not None) / sum(samples)
            if all(w is not None for w in waits)
            else None
        )
        out[number] = Retimed(
            number=number,
            seconds=statistics.median(samples),
            seconds_cv=_finite(cv(samples)),
            joules=statistics.median(metered) if len(metered) == len(samples) else float("nan"),
            joules_cv=_finite(cv(metered)) if len(metered) == len(samples) else 0.0,
            seconds_samples=tuple(samples),
            cpu_wait_fraction=wait,
            beside=tuple(n for n in chosen if n != number),
            rounds=rounds,
        )
    if store:
        store_retimings(study, out)
    return out


def _finite(value: float) -> float:
    return value if value == value else 0.0  # NaN (one round) allows no noise


def store_retimings(study: optuna.Study, retimed: Mapping[int, Retimed]) -> None:
    """Merge ``retimed`` into the study's ``retimed`` user attr (trial number → figures)."""
    stored = dict(study.user_attrs.get(RETIMED_ATTR) or {})
    stamp = time.time()
    for number, figures in retimed.items():
        stored[str(number)] = {**figures.to_dict(), "timestamp": stamp}
    study.set_user_attr(RETIMED_ATTR, stored)


def stored_retimings(study: optuna.Study) -> dict[int, Retimed]:
    """The latest side-by-side re-timing stored in ``study`` (empty when none): only the
    trials timed in that one session, so their figures compare with each other."""
    stored = study.user_attrs.get(RETIMED_ATTR) or {}
    if not isinstance(stored, dict) or not stored:
        return {}
    latest = max(float(v.get("timestamp", 0.0)) for v in stored.values())
    out = {}
    for key, value in stored.items():
        if float(value.get("timestamp", 0.0)) != latest:
            continue
        fields = {k: v for k, v in value.items() if k != "timestamp"}
        fields["seconds_samples"] = tuple(fields["seconds_samples"])
        fields["beside"] = tuple(fields["beside"])
        out[int(key)] = Retimed(**fields)
    return out
