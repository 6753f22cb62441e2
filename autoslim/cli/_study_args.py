"""The STUDY argument of ``report``, ``pick`` and ``export``: which stored study to open.

STUDY is a storage URL (``sqlite:///studies/demo.db``, ``postgresql://...``) or the path of a
SQLite file; ``--study-name`` names the study when the storage holds more than one.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from autoslim.errors import ConfigError


def add_study_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "study",
        metavar="STUDY",
        help="the study's storage: a URL (sqlite:///studies/demo.db) or a SQLite file path",
    )
    parser.add_argument(
        "--study-name", help="which study in STUDY (needed when it holds more than one)"
    )


def open_study(args: argparse.Namespace) -> Any:
    """Load the study named by ``args.study`` / ``args.study_name``; never creates one."""
    import optuna

    url = _storage_url(args.study)
    from sqlalchemy.exc import SQLAlchemyError

    try:
        names = optuna.study.get_all_study_names(storage=url)
    except (ValueError, ImportError, SQLAlchemyError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"STUDY {_shown(args.study)!r}: cannot open the storage ({first_line}); give a "
            "SQLite file or a storage URL such as sqlite:///studies/demo.db"
        ) from e
    if args.study_name is None:
        if len(names) != 1:
            raise ConfigError(
                f"STUDY {_shown(args.study)!r} holds {len(names)} studies "
                f"({', '.join(names) or 'none'}); name one with --study-name"
            )
        name = names[0]
    elif args.study_name not in names:
        raise ConfigError(
            f"--study-name {args.study_name!r} is not in {_shown(args.study)!r}; it holds "
            f"{', '.join(names) or 'no study'}"
        )
    else:
        name = args.study_name
    return optuna.load_study(study_name=name, storage=url)


def _storage_url(study: str) -> str:
    if "://" not in study:
        path = Path(study).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"STUDY {study!r}: no such file; give the study's SQLite file or its storage "
                "URL (sqlite:///path.db, postgresql://...)"
            )
        return f"sqlite:///{path.resolve()}"
    if study.startswith("sqlite:///"):
        path = Path(study.removeprefix("sqlite:///"))
        if not path.is_file():
            raise ConfigError(
                f"STUDY {study!r}: the SQLite file {str(path)!r} does not exist; run "
                "`autoslim search` first or check the path"
            )
    return study


def _shown(study: str) -> str:
    """STUDY as it may be printed: a URL's password is masked."""
    if "://" not in study:
        return study
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(study).render_as_string(hide_password=True)
    except ArgumentError:
        return study.split("://", 1)[0] + "://..."
