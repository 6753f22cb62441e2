"""``autoslim pick``: rank the Pareto-optimal trials within the perplexity budget."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from typing import Any

from autoslim.cli._common import print_json
from autoslim.cli._study_args import add_study_args, open_study


def add_choice_args(parser: argparse.ArgumentParser, *, retime_by_default: bool = False) -> None:
    """``--prefer`` / ``--weights`` / ``--max-ppl-increase`` / budgets and the re-timing,
    shared with ``export`` (which re-times by default: it rebuilds a model anyway)."""
    from autoslim.outputs.weights import PRESETS

    parser.add_argument(
        "--prefer",
        choices=tuple(PRESETS),
        help="weight preset: time 0.8/0.2, energy 0.2/0.8, balanced 0.5/0.5 (the default)",
    )
    parser.add_argument(
        "--weights", metavar="time=W,energy=W", help="explicit weights, e.g. time=0.7,energy=0.3"
    )
    parser.add_argument(
        "--max-ppl-increase",
        type=float,
        metavar="X",
        help="tighten the study's perplexity budget to base * (1 + X), e.g. 0.05",
    )
    if retime_by_default:
        parser.add_argument(
            "--no-retime",
            dest="retime",
            action="store_false",
            help="choose on the stored timings instead of re-timing the top candidates and the "
            "base side by side first (the default when no --trial is given)",
        )
    else:
        parser.add_argument(
            "--retime",
            action="store_true",
            help="before choosing, rebuild the top candidates and the base here and time them "
            "side by side, interleaved (minutes: distillation runs again); rank on those figures",
        )
    from autoslim.search.budgets import BUDGETS, task_flag
    from autoslim.tasks.spec import TASK_BOUNDS

    for budget in BUDGETS:
        parser.add_argument(
            budget.flag,
            dest=budget.key,
            metavar="50MB" if budget.kind == "bytes" else "X",
            help=f"{budget.bound} {budget.figure}: {budget.doc}; tightens the study's own",
        )
    for key, bound in TASK_BOUNDS.items():
        parser.add_argument(
            task_flag(key),
            dest=f"task_{key}",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help=f"{bound} score of the study's task NAME (one of its [tasks]); tightens the "
            "study's own; repeatable",
        )


def tightened(args: argparse.Namespace) -> dict[str, float]:
    """The budget and task-bound flags given, parsed: ``[budgets]`` key or
    :func:`autoslim.search.budgets.task_key` → limit."""
    import math

    from autoslim.errors import ConfigError
    from autoslim.search.budgets import BUDGETS, task_flag, task_key
    from autoslim.tasks.spec import TASK_BOUNDS

    out = {}
    for budget in BUDGETS:
        given = getattr(args, budget.key, None)
        if given is None:
            continue
        try:
            out[budget.key] = budget.parse(given)
        except ValueError as e:
            raise ConfigError(f"{budget.flag}: {e}") from e
    for key in TASK_BOUNDS:
        for text in getattr(args, f"task_{key}", ()):
            name, _, value = text.partition("=")
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if not name.strip() or not math.isfinite(number):
                raise ConfigError(
                    f"{task_flag(key)} {text!r}: write NAME=VALUE with a finite number, e.g. "
                    f"{task_flag(key)} pydoc=0.5"
                )
            out[task_key(name.strip(), key)] = number
    return out


@contextlib.contextmanager
def show_progress(args: argparse.Namespace) -> Iterator[None]:
    """With ``--retime``, the rebuilds and interleaved rounds as they go, on stderr (``--json``
    keeps stdout to one object): a bar on a terminal, else a line per stage and at least
    every 30 s (:mod:`autoslim.cli._progress`)."""
    import sys

    from autoslim import progress
    from autoslim.cli._progress import StageBar, is_terminal

    if not args.retime:
        yield
        return
    shown = StageBar(sys.stderr, is_terminal(sys.stderr), each_stage=True)
    progress.listen(lambda p: shown.show("re-timing", p))
    try:
        yield
    finally:
        progress.listen(None)
        shown.close()


def register(subparsers: Any) -> None:
    subparsers.add_parser(
        "pick",
        help="rank the Pareto-optimal trials within the perplexity budget by time and energy",
        description="Keep the completed, Pareto-optimal trials within the perplexity budget, "
        "rank them by weighted time and energy, and say why the first one won.",
        arguments=add_arguments,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_study_args(parser)
    add_choice_args(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autoslim.outputs.pick import choose
    from autoslim.outputs.weights import weights_from

    study = open_study(args)
    weights = weights_from(args.prefer, args.weights)
    with show_progress(args):
        choice = choose(study, weights, args.max_ppl_increase, tightened(args), retime=args.retime)
    if args.json:
        print_json("pick", {"study": study.study_name, **choice.to_dict()})
        return 0
    print(f"study {study.study_name}: {choice.budget.describe()}, {choice.weights.describe()}")
    tasks = sorted({n for c in choice.ranking for n in c.tasks} - set(choice.objectives))
    header = ("rank", "trial", "score", *choice.objectives, *tasks, "recipe")
    rows = [
        (
            str(i),
            str(c.number) + (" (base)" if c.is_base else ""),
            f"{c.score:.3f}",
            *(
                f"{c.values[n]:.4g}" + (f" {c.energy_source}" if n == "joules" else "")
                for n in choice.objectives
            ),
            *(f"{c.tasks[n]:.4g}" if n in c.tasks else "-" for n in tasks),
            c.recipe.describe(),
        )
        for i, c in enumerate(choice.ranking, start=1)
    ]
    widths = [max(len(r[k]) for r in (header, *rows)) for k in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for c in choice.ranking:
        if c.budgets:
            print(f"trial {c.number}: {c.budgets}")
    print(f"{'chosen' if choice.recommended else 'no recommendation'}: {choice.reason}")
    return 0
