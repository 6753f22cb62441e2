"""``autoslim search studies/NAME.toml``: create or resume a study and run its trials."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from autoslim.cli._common import print_json
from autoslim.objectives import DEFAULT_OBJECTIVES


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
    from autoslim.search import config as study_config
    from autoslim.search.storage import check_driver

    config = study_config.load(args.study_file, overrides=overrides_from(args))
    check_driver(config.study.storage)
    if args.check:
        print(f"{args.study_file}: valid (study {config.study.name!r})")
        return 0
    summary, study = run_search(config, quiet=args.json)
    if args.json:
        print_json("search", summary_dict(summary, study))
    return 0


def run_search(config: Any, *, quiet: bool = False, worker_id: int = 0) -> tuple[Any, Any]:
    """Run the study with its progress on stderr (:mod:`autoslim.cli._progress`) and a line
    per finished trial (on stdout; with ``quiet``, for ``--json``, on stderr and without the
    opening and closing lines); returns the summary and the study."""
    import optuna

    from autoslim.cli._progress import StudyProgress, clock
    from autoslim.search import study as search
    from autoslim.search.storage import make_storage
    from autoslim.search.trials import record
    from autoslim.urls import mask_url

    if not logging.getLogger().isEnabledFor(logging.INFO):
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    run = config.study
    limits = [f"{run.n_trials} trials"] if run.n_trials else []
    if run.time_limit_seconds:
        limits.append(f"{clock(run.time_limit_seconds)} time limit")
    if not quiet:
        print(
            f"study {run.name!r}: {' / '.join(limits)}, sampler {run.sampler}, objectives "
            f"{', '.join(config.objectives)}, perplexity at most "
            f"+{config.max_ppl_increase:.0%} over the base model"
        )
        print(f"storage {mask_url(run.storage)}", flush=True)
    shown = StudyProgress(
        lambda trial: describe_record(record(trial, config.objectives)),
        time_limit_seconds=run.time_limit_seconds,
        results=sys.stderr if quiet else sys.stdout,
    )
    try:
        summary = search.run_study(config, progress=shown.update, worker_id=worker_id)
    finally:
        shown.close()
    study = optuna.load_study(study_name=run.name, storage=make_storage(run.storage))
    if not quiet:
        states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(summary.states.items()))
        print(
            f"stopped: {summary.stopped_because}; this run: {summary.trials_run} trials "
            f"({states or 'none'}) in {clock(summary.wall_seconds)}"
        )
        print_pareto(study)
        print(
            f"browse it: optuna-dashboard {mask_url(run.storage)} (its best-trials list "
            "ignores the perplexity budget; `autoslim pick` ranks the feasible ones)"
        )
    return summary, study


def describe_record(trial: Any) -> str:
    """One line for a finished trial: its recipe, its figures by name, its duration."""
    seconds = "" if trial.duration_seconds is None else f" ({trial.duration_seconds:.1f} s)"
    if trial.complete:
        figures = ", ".join(
            f"{name} {_figure(trial.values.get(name, trial.measurement.get(name)))}"
            for name in dict.fromkeys((*DEFAULT_OBJECTIVES, *trial.values))
        )
        return f"#{trial.number} {trial.recipe.describe()}: {figures}{seconds}"
    return f"#{trial.number} {trial.recipe.describe()}: {trial.state.name} {trial.reason}{seconds}"


def _figure(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else str(value)


def print_pareto(study: Any) -> None:
    """The feasible Pareto set as a table, sorted by perplexity."""
    from autoslim.search.trials import best_records, objective_names

    best = best_records(study)
    base = study.user_attrs.get("base_perplexity")
    names = objective_names(study)
    print(f"Pareto set ({len(best)} trials):")
    if not best:
        return
    header = ["trial", "recipe", *names, "vs base"]
    rows = []
    for t in best:
        change = f"{t.perplexity / base - 1:+.1%}" if base else ""
        rows.append(
            [f"#{t.number}", t.recipe.describe(), *(f"{t.values[n]:.4g}" for n in names), change]
        )
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def summary_dict(summary: Any, study: Any) -> dict[str, Any]:
    from dataclasses import asdict

    from autoslim.search.study import abort_savings
    from autoslim.search.trials import best_records, objective_names

    run = asdict(summary)
    return {
        "study": run.pop("study_name"),
        "storage": run.pop("storage"),
        "objectives": list(objective_names(study)),
        "run": run,
        "pareto": [r.to_dict() for r in best_records(study)],
        "early_abort": asdict(abort_savings(study)),
    }
