"""The STUDY argument of ``report``, ``pick`` and ``export``: which stored study to open.

STUDY is the study file the search ran (``studies/demo.toml``: its storage and name are used),
a storage URL (``sqlite:///studies/demo.db``, ``postgresql://...``) or the path of a SQLite
file; ``--study-name`` names the study when a storage holds more than one.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from autoslim.errors import ConfigError
from autoslim.urls import mask_url


def add_study_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "study",
        metavar="STUDY",
        help="the study file (studies/demo.toml), its storage URL "
        "(sqlite:///studies/demo.db) or its SQLite file",
    )
    parser.add_argument(
        "--study-name", help="which study in STUDY (needed when its storage holds several)"
    )


def open_study(args: argparse.Namespace) -> Any:
    """Load the study named by ``args.study`` / ``args.study_name``; never creates one."""
    import optuna

    from autoslim.search.storage import make_storage

    url, name = storage_of(args.study)
    name = args.study_name or name
    shown = mask_url(url)
    storage = make_storage(url)
    names = optuna.study.get_all_study_names(storage=storage)
    if not names:
        raise ConfigError(
            f"STUDY {shown!r} holds no study yet; run `autoslim search` on the study file "
            "first, or check the path"
        )
    if name is None:
        if len(names) != 1:
            raise ConfigError(
                f"STUDY {shown!r} holds {len(names)} studies ({', '.join(names) or 'none'}); "
                "name one with --study-name"
            )
        name = names[0]
    elif name not in names:
        raise ConfigError(
            f"study {name!r} is not in {shown!r}, which holds {', '.join(names) or 'no study'}; "
            "run `autoslim search` first, or give the right --study-name"
        )
    return optuna.load_study(study_name=name, storage=storage)


def storage_of(study: str) -> tuple[str, str | None]:
    """(storage URL, study name if STUDY says it); a missing SQLite file is an error."""
    if study.endswith(".toml"):
        from autoslim.search import config

        run = config.load(study, check_model=False).study
        url, name = run.storage, run.name
    elif "://" in study:
        url, name = study, None
    else:
        path = Path(study).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"STUDY {study!r}: no such file; give the study file (studies/NAME.toml), "
                "its SQLite file or its storage URL (sqlite:///path.db, postgresql://...)"
            )
        url, name = f"sqlite:///{path.resolve()}", None
    from autoslim.urls import file_of

    file = file_of(url)
    if file is not None and not file.is_file():
        raise ConfigError(
            f"STUDY {study!r}: the study file {str(file)!r} does not exist; run "
            "`autoslim search` first or check the path"
        )
    return url, name


def study_arg_files(args: argparse.Namespace) -> list[Path]:
    """The study file or SQLite file that ``args.study`` names (nothing for a URL)."""
    return [] if "://" in args.study else [Path(args.study)]
