"""``autoslim doctor STUDY``: check a study's SQLite or journal file, back it up, recover what
it can.

The file is never written to: the backup is a byte copy, and a damaged file's readable rows
(SQLite) or complete entries (journal: an entry appended onto a torn one included) go into a
new file ``NAME.recovered-STAMP.db`` / ``.log`` beside it, which ``search`` / ``report`` /
``pick`` open like any study file once it passes the same check. A trial a storage fault left
RUNNING with its reason deferred (:func:`autoslim.search.integrity.defer_failure`) is named with
that reason; the next ``search`` or ``worker`` writes it.
"""

from __future__ import annotations

import argparse
import sqlite3
import time
from pathlib import Path
from typing import Any

from autoslim.cli._study_args import add_study_args, storage_of


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check a study's SQLite or journal file, back it up and recover its trials",
        description="Back up the study's SQLite or journal file, check it (SQLite's "
        "quick_check; every journal line a complete entry) and, when it is damaged, copy every "
        "row or complete entry it still holds into a new file beside it. Exits 0 when the file "
        "is sound, 1 when it was damaged (the recovered file is named).",
    )
    add_study_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autoslim.errors import ConfigError, StorageError
    from autoslim.search import integrity
    from autoslim.urls import mask_url

    url, _ = storage_of(args.study)
    journal = integrity.journal_path(url)
    if journal is not None:
        return _journal(url, journal)
    path = integrity.sqlite_path(url)
    if path is None:
        raise ConfigError(
            f"STUDY {mask_url(url)!r} is not a SQLite or journal file; doctor checks those "
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
    try:
        counts = integrity.recover(path, target)
    except sqlite3.DatabaseError as e:  # not a database at all: no table to read rows from
        print(
            f"recovered    nothing: SQLite reads no table from {path} ({e}); check that STUDY "
            "names the study's .db file"
        )
        return 1
    lost = sum(v for k, v in counts.items() if k.endswith("(lost)"))
    print(f"recovered    {target} ({lost} unreadable rows left behind)")
    return _check_recovered(f"sqlite:///{target}", target, path)


def _journal(url: str, path: Path) -> int:
    from autoslim.search import integrity

    backup = integrity.backup(path)
    print(f"backup       {backup}")
    scan = integrity.scan_journal(path)
    if not scan.damaged and not scan.torn_bytes:
        print(f"integrity    ok ({path}: {scan.describe()})")
        print(_trials_line(url))
        for line in _deferred_lines(url):
            print(line)
        return 0
    print(f"integrity    damaged: {scan.describe()}")
    target = path.with_name(f"{path.stem}.recovered-{time.strftime('%Y%m%d-%H%M%S')}.log")
    kept, lost = integrity.recover_journal(path, target)
    if not kept:
        print(
            f"recovered    nothing: no line of {path} is a journal entry; check that STUDY names "
            "the study's journal file"
        )
        return 1
    print(f"recovered    {target} ({kept} complete entries kept, {lost} incomplete left behind)")
    return _check_recovered(f"journal:///{target}", target, path)


def _check_recovered(url: str, target: Path, path: Path) -> int:
    """Open the recovered file as a study and say what to do with it; exit status 1."""
    from autoslim.search import integrity

    try:
        integrity.check_storage(url)
        line = _trials_line(url)
    except Exception as e:  # the recovered rows may not form a usable study
        print(f"recovered    file does not open as a study: {type(e).__name__}: {e}")
        return 1
    print(line)
    print(
        f"next         point [study].storage at {url} (or move it over {path.name} after "
        "keeping the backup), then run `autoslim search` to continue"
    )
    return 1


def _trials_line(url: str) -> str:
    """``trials       STUDY: 9 COMPLETE, 1 FAIL`` for each study the storage holds."""
    import optuna

    from autoslim.search.storage import make_storage

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

    from autoslim.search import integrity
    from autoslim.search.storage import make_storage

    lines = []
    for name in optuna.study.get_all_study_names(make_storage(url)):
        for deferred in integrity.deferred_failures(url, name):
            lines.append(
                f"deferred     {name} trial {deferred.trial}: stays RUNNING until the next "
                f"`autoslim search` or `worker` fails it ({deferred.reason})"
            )
    return lines
