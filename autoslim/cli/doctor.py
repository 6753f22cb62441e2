"""``autoslim doctor STUDY``: check a study's SQLite file, back it up, recover what it can.

The file is never written to: the backup is a byte copy, and a damaged file's readable rows
go into a new file ``NAME.recovered-STAMP.db`` beside it, which ``search`` / ``report`` /
``pick`` open like any study file once it passes the same check. A trial a storage fault left
RUNNING with its reason deferred (:func:`autoslim.integrity.defer_failure`) is named with that
reason; the next ``search`` or ``worker`` writes it.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from autoslim.cli._study_args import add_study_args, storage_of


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check a study's SQLite file, back it up and recover its readable trials",
        description="Back up the study's SQLite file, run SQLite's quick_check on it and, when "
        "it is damaged, copy every row it can still read into a new file beside it. Exits 0 "
        "when the file is sound, 1 when it was damaged (the recovered file is named).",
    )
    add_study_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autoslim import integrity
    from autoslim.config import mask_url
    from autoslim.errors import ConfigError, StorageError

    url, _ = storage_of(args.study)
    path = integrity.sqlite_path(url)
    if path is None:
        raise ConfigError(
            f"STUDY {mask_url(url)!r} is not a SQLite file; doctor checks SQLite studies "
            "(a database server has its own backup and check tools, e.g. pg_dump)"
        )
    backup = integrity.backup(path)
    print(f"backup       {backup}")
    try:
        integrity.check_storage(url)
    except StorageError as e:
        print(f"integrity    damaged: {e}")
    else:
        print(f"integrity    ok ({path}: SQLite quick_check passed)")
        print(_trials_line(url))
        for line in _deferred_lines(url):
            print(line)
        return 0
    target = path.with_name(f"{path.stem}.recovered-{time.strftime('%Y%m%d-%H%M%S')}.db")
    counts = integrity.recover(path, target)
    lost = sum(v for k, v in counts.items() if k.endswith("(lost)"))
    print(f"recovered    {target} ({lost} unreadable rows left behind)")
    recovered_url = f"sqlite:///{target}"
    try:
        integrity.check_storage(recovered_url)
        line = _trials_line(recovered_url)
    except Exception as e:  # the recovered rows may not form a usable study
        print(f"recovered    file does not open as a study: {type(e).__name__}: {e}")
        return 1
    print(line)
    print(
        f"next         point [study].storage at sqlite:///{target} (or move it over {path.name} "
        "after keeping the backup), then run `autoslim search` to continue"
    )
    return 1


def _trials_line(url: str) -> str:
    """``trials       STUDY: 9 COMPLETE, 1 FAIL`` for each study the storage holds."""
    import optuna

    from autoslim.storage import make_storage

    storage = make_storage(url)
    parts = []
    for summary in optuna.study.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        states: dict[str, int] = {}
        for trial in study.get_trials(deepcopy=False):
            states[trial.state.name] = states.get(trial.state.name, 0) + 1
        shown = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "no trials"
        parts.append(f"{summary.study_name}: {shown}")
    return f"trials       {'; '.join(parts) or 'no study'}"


def _deferred_lines(url: str) -> list[str]:
    """``deferred     STUDY trial 5: …`` for each trial a storage fault left RUNNING."""
    import optuna

    from autoslim import integrity
    from autoslim.storage import make_storage

    lines = []
    for name in optuna.study.get_all_study_names(make_storage(url)):
        for deferred in integrity.deferred_failures(url, name):
            lines.append(
                f"deferred     {name} trial {deferred.trial}: stays RUNNING until the next "
                f"`autoslim search` or `worker` fails it ({deferred.reason})"
            )
    return lines
