"""What a trial costs beyond its work: trial wall time against its measured stages, and worker
memory after trial 5 against after the last trial.

    .venv/bin/python bench/trial_overhead.py [--trials 50]   # --trials 8 for a quick look

Runs the demo study (``studies/demo.toml``: reference model, TPE, its workload) for
``--trials`` trials through ``autoslim.search.study.run_study`` into a fresh SQLite file, with
worker recycling off so memory creep would show. Per trial: wall time as the study stores it (start
to complete), the worker's own time for the recipe, the build stages it reports, and the
measurement (the worker's time less the build). The overhead ratio is the study loop's wall
time (first trial start to last trial end: sampling, storage, process hops) over the summed
worker time; goal at most 1.05. Worker RSS is what the worker reports after each trial.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from pathlib import Path

import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoslim.cli.demo import DEMO_FILE
from autoslim.search import config as study_config
from autoslim.search.study import counts_toward_total, run_study
from autoslim.search.trials import record
from bench.machine import Load, describe, machine

GOAL_RATIO = 1.05
GOAL_RSS_GROWTH = 0.10
RSS_AT = 5


def seconds(trial: optuna.trial.FrozenTrial) -> float:
    assert trial.datetime_start is not None and trial.datetime_complete is not None
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "overhead.db"
        overrides = {
            "study": {
                "n_trials": args.trials,
                "time_limit_seconds": 1e9,
                "recycle_every": 0,
                # A timed-out trial restarts the worker, which would hide memory creep.
                "trial_timeout_seconds": 3600,
                "storage": f"sqlite:///{db}",
                "name": "overhead",
            }
        }
        config = study_config.load(DEMO_FILE, overrides=overrides)
        load = Load()
        summary = run_study(config)
        window = load.stop()
        study = optuna.load_study(study_name="overhead", storage=config.study.storage)
        trials = [
            t
            for t in study.get_trials()
            if counts_toward_total(t) and t.state != optuna.trial.TrialState.FAIL
        ]
    # The worker's own seconds per trial, in the order trials ran (the summary keeps
    # wall - worker seconds for every trial that finished its work).
    print(f"machine: {describe(machine())}")
    print(
        f"demo study, {len(trials)} trials, {summary.states}, worker start "
        f"{sum(summary.worker_setup_seconds):.1f} s; load average {window['load_average']:.2f}, "
        f"study process CPU wait n/a (the work runs in the worker)"
    )
    print(
        f"\n{'trial':>5} {'wall s':>7} {'worker s':>8} {'build s':>7} {'measure s':>9} "
        f"{'hop s':>6} {'RSS MiB':>8} {'cpu wait':>8}  recipe"
    )
    hops = summary.overhead_seconds
    worker_total = 0.0
    rss: list[tuple[int, int]] = []
    for i, t in enumerate(trials):
        wall = seconds(t)
        hop = hops[i] if i < len(hops) else float("nan")
        worker = wall - hop
        build = sum(record(t, study.metric_names).build.get("stage_seconds", {}).values())
        worker_total += worker
        rss_bytes = int((t.user_attrs.get("worker") or {}).get("rss_bytes", 0))
        rss.append((i + 1, rss_bytes))
        wait = t.user_attrs.get("cpu_wait_fraction")
        print(
            f"{i + 1:>5} {wall:7.2f} {worker:8.2f} {build:7.2f} {worker - build:9.2f} "
            f"{hop:6.3f} {rss_bytes / 2**20:8.0f} "
            f"{'' if wait is None else f'{wait:.0%}':>8}  "
            f"{t.user_attrs.get('known') or ''} {t.state.name.lower()}"
        )
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    ends = [t.datetime_complete for t in trials if t.datetime_complete is not None]
    loop = (max(ends) - min(starts)).total_seconds()
    ratio = loop / worker_total
    print(
        f"\nstudy loop {loop:.1f} s over {worker_total:.1f} s of worker time: overhead ratio "
        f"{ratio:.3f} (goal <= {GOAL_RATIO}; {'met' if ratio <= GOAL_RATIO else 'NOT met'}); "
        f"median process hop {statistics.median(hops):.3f} s per trial"
    )
    early = next((b for n, b in rss if n == RSS_AT), None)
    if early and len(rss) > RSS_AT:
        late_n, late = rss[-1]
        growth = late / early - 1
        print(
            f"worker RSS after trial {RSS_AT} {early / 2**20:.0f} MiB, after trial {late_n} "
            f"{late / 2**20:.0f} MiB: {growth:+.1%} (goal within {GOAL_RSS_GROWTH:.0%}; "
            f"{'met' if abs(growth) <= GOAL_RSS_GROWTH else 'NOT met'})"
        )


if __name__ == "__main__":
    main()
