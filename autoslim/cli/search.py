"""``autoslim search studies/NAME.toml``: create or resume a study and run its trials."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from autoslim.cli._common import print_json


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "search",
        help="run (or resume) the multi-objective search described by a study file",
        description="Create the study named in the file, or resume it, and run trials until "
        "its trial count or time limit. Re-running the same command continues the study.",
    )
    parser.add_argument("study_file", type=Path, metavar="STUDY_FILE", help="studies/NAME.toml")
    parser.add_argument("--n-trials", type=int, help="override study.n_trials")
    parser.add_argument(
        "--time-limit", type=float, metavar="SECONDS", help="override study.time_limit_seconds"
    )
    parser.add_argument(
        "--check", action="store_true", help="validate the study file and exit (creates nothing)"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    parser.set_defaults(func=run)


def overrides_from(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    study: dict[str, Any] = {}
    if args.n_trials is not None:
        study["n_trials"] = args.n_trials
    if args.time_limit is not None:
        study["time_limit_seconds"] = args.time_limit
    return {"study": study} if study else {}


def run(args: argparse.Namespace) -> int:
    from autoslim import config as study_config

    config = study_config.load(args.study_file, overrides=overrides_from(args))
    if args.check:
        print(f"{args.study_file}: valid (study {config.study.name!r})")
        return 0
    summary, study = run_search(config, quiet=args.json)
    if args.json:
        print_json(summary_dict(summary, study))
    return 0


def run_search(config: Any, *, quiet: bool = False) -> tuple[Any, Any]:
    """Run the study with a progress line per trial; returns the summary and the study."""
    import optuna

    from autoslim import study as search
    from autoslim.config import mask_url

    if not logging.getLogger().isEnabledFor(logging.INFO):
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    run = config.study
    limits = [f"{run.n_trials} trials"] if run.n_trials else []
    if run.time_limit_seconds:
        limits.append(f"{_clock(run.time_limit_seconds)} time limit")
    if not quiet:
        print(
            f"study {run.name!r}: {' / '.join(limits)}, sampler {run.sampler}, objectives "
            f"{', '.join(config.objectives)}, perplexity at most "
            f"+{config.max_ppl_increase:.0%} over the base model"
        )
        print(f"storage {mask_url(run.storage)}")
    tty = sys.stdout.isatty()

    def progress(p: search.Progress) -> None:
        if quiet:
            return
        total = f"{p.total}" if p.total else "?"
        head = (
            f"[{p.done:>3}/{total}] {_clock(p.elapsed_seconds)} elapsed, ETA "
            f"{_clock(p.eta_seconds) if p.eta_seconds is not None else '?'}, "
            f"Pareto {p.pareto_size}"
        )
        if p.trial is None:
            print(f"{head} | running {p.message}", end="\r" if tty else "\n", flush=True)
            return
        clear = "\x1b[2K" if tty else ""
        print(f"{clear}{head} | {describe_trial(p.trial)}", flush=True)

    summary = search.run_study(config, progress=progress)
    study = optuna.load_study(study_name=run.name, storage=search.make_storage(run.storage))
    if not quiet:
        states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(summary.states.items()))
        print(
            f"stopped: {summary.stopped_because}; this run: {summary.trials_run} trials "
            f"({states or 'none'}) in {_clock(summary.wall_seconds)}"
        )
        print_pareto(study)
        print(f"browse it: optuna-dashboard {mask_url(run.storage)}")
    return summary, study


def describe_trial(trial: Any) -> str:
    from autoslim.study import trial_recipe

    attrs = trial.user_attrs
    recipe = "base model" if attrs.get("is_base") else trial_recipe(trial).describe()
    seconds = ""
    if trial.datetime_start and trial.datetime_complete:
        seconds = f" ({(trial.datetime_complete - trial.datetime_start).total_seconds():.1f} s)"
    if trial.state.name == "COMPLETE":
        m = attrs.get("measurement", {})
        return (
            f"#{trial.number} {recipe}: perplexity {m.get('perplexity', float('nan')):.2f}, "
            f"{m.get('seconds', float('nan')):.4f} s, {m.get('joules', float('nan')):.3f} J"
            f"{seconds}"
        )
    reason = attrs.get("fail_reason") or attrs.get("prune_reason") or ""
    return f"#{trial.number} {recipe}: {trial.state.name} {reason}{seconds}"


def print_pareto(study: Any) -> None:
    """The feasible Pareto set as a table, sorted by perplexity."""
    from autoslim.study import trial_recipe

    best = sorted(study.best_trials, key=lambda t: t.values[0])
    base = study.user_attrs.get("base_perplexity")
    names = study.metric_names or [f"objective {i}" for i in range(len(study.directions))]
    print(f"Pareto set ({len(best)} trials):")
    if not best:
        return
    header = ["trial", "recipe", *names, "vs base"]
    rows = []
    for t in best:
        recipe = "base model" if t.user_attrs.get("is_base") else trial_recipe(t).describe()
        change = f"{t.values[0] / base - 1:+.1%}" if base else ""
        rows.append([f"#{t.number}", recipe, *(f"{v:.4g}" for v in t.values), change])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def summary_dict(summary: Any, study: Any) -> dict[str, Any]:
    from dataclasses import asdict

    from autoslim.study import abort_savings

    return {
        **asdict(summary),
        "pareto": [
            {"number": t.number, "values": t.values, "recipe": t.user_attrs.get("recipe")}
            for t in study.best_trials
        ],
        "early_abort": asdict(abort_savings(study)),
    }


def _clock(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"
