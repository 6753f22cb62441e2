"""Storage URLs: the kinds autoslim opens, the file one names, and how one may be shown.

Declared once here, below everything that opens, checks or prints a study's storage
(``storage``, ``integrity``, ``config``, the CLI): a URL's credentials never leave this
module unmasked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SQLITE_LOCK_TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class Scheme:
    """One kind of storage URL: who it is for and what it needs installed."""

    prefix: str
    example: str
    use: str
    drivers: tuple[str, ...] = ()  # importable modules, any one of which will do
    extra: str = ""  # the pip extra that installs a driver
    file: bool = False  # the URL names a local file (after ``prefix``), not a server


SCHEMES = {
    "sqlite": Scheme("sqlite:///", "sqlite:///FILE.db", "one process on one machine", file=True),
    "journal": Scheme(
        "journal:///", "journal:///FILE.log", "many processes on one machine, no server", file=True
    ),
    "postgresql": Scheme(
        "postgresql://",
        "postgresql://USER@HOST/DB",
        "many machines",
        drivers=("psycopg", "psycopg2"),
        extra="postgres",
    ),
    "mysql": Scheme(
        "mysql://", "mysql://USER@HOST/DB", "many machines", drivers=("pymysql", "MySQLdb")
    ),
}


def scheme_of(url: str) -> str:
    """``postgresql+psycopg2://…`` → ``postgresql``; an unknown scheme as written."""
    return url.split(":", 1)[0].split("+", 1)[0]


def file_of(url: str) -> Path | None:
    """The file a sqlite or journal URL names (``None`` for a server)."""
    scheme = SCHEMES.get(scheme_of(url))
    if scheme is None or not scheme.file:
        return None
    return Path(url.removeprefix(scheme.prefix))


def parse_url(url: str) -> Any:
    """SQLAlchemy's reading of ``url``; None for one it cannot read."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        return None


# Query parameters of a database URL that carry a credential (libpq's password and
# sslpassword, drivers' tokens and keys); ``passfile`` names a file and is not one.
CREDENTIAL_PARAM = re.compile(r"pass(?!file)|pwd|secret|token|key", re.IGNORECASE)


def url_credentials(url: str) -> list[str]:
    """The parts of ``url`` that carry a credential: ``password`` and query parameter names."""
    parsed = parse_url(url)
    if parsed is None:
        return []
    found = ["password"] if parsed.password is not None else []
    return found + [k for k in parsed.query if CREDENTIAL_PARAM.search(k)]


def mask_url(url: str) -> str:
    """The URL as it may be shown or stored: every credential (the password, query
    parameters such as ``password`` or ``sslpassword``) replaced by ``***``."""
    parsed = parse_url(url)
    if parsed is None:  # masked by hand: the host stays readable, the secrets do not
        head, _, query_text = url.partition("?")
        head = re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", head)
        params = [
            f"{k}=***" if CREDENTIAL_PARAM.search(k) else f"{k}={v}"
            for k, _, v in (p.partition("=") for p in query_text.split("&") if p)
        ]
        return head + ("?" + "&".join(params) if params else "")
    query = {k: "***" if CREDENTIAL_PARAM.search(k) else v for k, v in parsed.query.items()}
    shown = str(parsed.set(query=query).render_as_string(hide_password=True))
    return shown.replace("%2A%2A%2A", "***")
