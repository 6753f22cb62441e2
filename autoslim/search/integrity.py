"""Storage faults: checked before anything is written, explained in one line when they strike.

- :func:`check_storage` runs SQLite's ``PRAGMA quick_check`` on a study file, read-only,
  before Optuna opens (and writes to) it; a damaged file is refused with how to recover.
- :func:`storage_fault` turns what the database driver raises (disk full, read-only file,
  locked database, unreachable server, bad port) into an :class:`StorageError` naming the
  storage and the fix. The CLI applies it to any exception that escapes a command.
- :func:`writable_folder` proves a folder accepts a new file (``os.access`` says yes to
  root on read-only mounts and on ``/proc``).
- :func:`defer_failure` keeps the reason of a trial the storage would not let the search fail
  (disk full, read-only, locked, server gone) in a small JSON file under autoslim's cache
  folder, outside that storage; :func:`deferred_failures` finds them again, so the next search
  or worker on the study fails the trial with that reason before the heartbeat calls it stale.
- :func:`scan_journal` reads a journal file the way Optuna replays it and finds what it
  cannot: a complete line that is no entry (damage, or an entry appended onto a torn one) and a
  torn tail (a writer killed mid-append, a full disk). A damaged journal is refused before
  anything is written; a torn tail is refused under the journal's own lock, before each append
  (:class:`autoslim.search.storage` opens journals with :func:`check_journal_tail`), since an entry
  appended onto it would glue to it and make the file unreadable.
- :func:`backup`, :func:`recover` (SQLite) and :func:`recover_journal` are what
  ``autoslim doctor`` runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from autoslim.errors import StorageError
from autoslim.urls import SCHEMES, SQLITE_LOCK_TIMEOUT_SECONDS, file_of, mask_url, scheme_of

logger = logging.getLogger(__name__)

# The storages this process opened (masked), newest last: a fault names the one it hit.
OPENED: list[str] = []

RECOVER_HINT = "run `autoslim doctor STUDY` to back it up and recover the trials it still holds"

# (what the driver says, what it means, the fix), first match wins.
FAULTS: tuple[tuple[str, str, str], ...] = (
    (
        "database or disk is full",
        "the disk is full",
        "free space on the disk that holds it and run the command again; completed trials "
        "are kept",
    ),
    (
        "no space left on device",
        "the disk is full",
        "free space on the disk that holds it and run the command again; completed trials "
        "are kept",
    ),
    (
        "readonly database",
        "the file or its folder is read-only",
        "make both writable (chmod u+w), or copy the study to a writable folder",
    ),
    (
        "read-only file system",
        "the file system is read-only",
        "copy the study to a writable disk and point [study].storage at the copy",
    ),
    (
        "unable to open database file",
        "SQLite cannot open it (its folder is read-only or missing; a study file in WAL mode "
        "needs a writable folder even to be read)",
        "make the folder writable, or copy the study to a writable folder",
    ),
    (
        "database is locked",
        "another process holds a lock on it for too long",
        "wait for the other `autoslim` (or sqlite3 shell) to finish, or stop it",
    ),
    (
        "disk i/o error",
        "the disk failed a read or write",
        "check the disk (dmesg) and free space, then " + RECOVER_HINT,
    ),
    (
        "database disk image is malformed",
        "the file is damaged",
        RECOVER_HINT,
    ),
    (
        "file is not a database",
        "the file is not a SQLite database (or is damaged)",
        "check [study].storage names the study's .db file, or " + RECOVER_HINT,
    ),
    (
        "connection refused",
        "no database server answers there",
        "start the server or fix the host and port in the URL",
    ),
    (
        "could not translate host name",
        "the host name does not resolve",
        "fix the host in the URL",
    ),
    (
        "timeout expired",
        "the database server did not answer in time",
        "check the server is up and reachable from this machine",
    ),
    (
        "port",
        "the port in the URL is not a number from 1 to 65535",
        "write HOST:PORT with a numeric port, e.g. localhost:5432",
    ),
)


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_storage_error(error: BaseException) -> bool:
    from sqlalchemy.exc import SQLAlchemyError

    return isinstance(error, sqlite3.Error | SQLAlchemyError) or (
        type(error).__module__.split(".")[0] in ("optuna", "psycopg", "psycopg2")
    )


def storage_fault(error: BaseException, storage: str | None = None) -> StorageError | None:
    """A one-line :class:`StorageError` for a storage fault somewhere in ``error``'s chain,
    or None when it is not one (``storage``: the URL, default the last one opened)."""
    chain = list(_chain(error))
    already = [e for e in chain if isinstance(e, StorageError)]
    if already:  # raised on purpose inside the storage (a torn journal tail)
        return already[0]
    if not any(_is_storage_error(e) for e in chain):
        return None
    text = " ".join(str(e) for e in chain).lower()
    where = mask_url(storage) if storage else (OPENED[-1] if OPENED else "the study storage")
    for needle, meaning, fix in FAULTS:
        if needle == "port" and not (
            "invalid port" in text or "port could not be cast" in text or "port must be" in text
        ):
            continue
        if needle in text:
            return StorageError(f"storage {where!r}: {meaning}; {fix}")
    return None


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL, or None for other storages."""
    if not url.startswith("sqlite:///"):
        return None
    return Path(url.removeprefix("sqlite:///").split("?", 1)[0])


def journal_path(url: str) -> Path | None:
    """The file of a ``journal:///`` URL, or None for other storages."""
    return file_of(url) if scheme_of(url) == "journal" else None


@dataclass(frozen=True)
class JournalScan:
    """What a journal file holds, line by line, as Optuna's journal reader sees it."""

    entries: int  # complete lines that are an entry
    damaged: tuple[int, ...]  # numbers (from 1) of complete lines that are no entry
    torn_bytes: int  # bytes after the last line end: an entry cut short

    def describe(self) -> str:
        parts = []
        if self.damaged:
            more = ", …" if len(self.damaged) > 5 else ""
            shown = ", ".join(map(str, self.damaged[:5])) + more
            parts.append(
                f"line{'s' if len(self.damaged) > 1 else ''} {shown} of "
                f"{self.entries + len(self.damaged)} {'are' if len(self.damaged) > 1 else 'is'} "
                "no complete journal entry"
            )
        if self.torn_bytes:
            parts.append(
                f"it ends with an incomplete entry ({self.torn_bytes} bytes after the last "
                "complete one: a writer killed mid-append, or a full disk)"
            )
        return "; ".join(parts) or f"{self.entries} complete entries"


def _entry(line: bytes) -> dict[str, Any] | None:
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) and "op_code" in entry else None


def scan_journal(path: Path) -> JournalScan:
    """Read ``path`` without writing to it."""
    entries = 0
    damaged = []
    torn = 0
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):
                torn = len(line)
            elif _entry(line) is not None:
                entries += 1
            else:
                damaged.append(number)
    return JournalScan(entries, tuple(damaged), torn)


def torn_tail(path: Path) -> int:
    """How many bytes follow the last line end of ``path`` (0: it ends with a whole entry)."""
    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        block = 4096
        while True:
            start = max(0, size - block)
            f.seek(start)
            data = f.read(size - start)
            end = data.rfind(b"\n")
            if end >= 0:
                return len(data) - end - 1
            if start == 0:
                return size
            block *= 2


def check_journal_tail(url: str, path: Path) -> None:
    """Refuse to append to a journal file whose last entry is incomplete (called under the
    journal's lock, so no live writer is halfway through it)."""
    torn = torn_tail(path)
    if torn:
        raise StorageError(
            f"storage {mask_url(url)!r} ends with an incomplete entry ({torn} bytes after the "
            "last complete one: a writer killed mid-append, or a full disk); nothing was "
            "appended to it; run `autoslim doctor STUDY` to back it up and keep every complete "
            "entry"
        )


def _salvage(line: bytes) -> dict[str, Any] | None:
    """The complete entry that ends a damaged line (one appended onto a torn entry), if any."""
    start = line.find(b"{", 1)
    while start >= 0:
        entry = _entry(line[start:])
        if entry is not None:
            return entry
        start = line.find(b"{", start + 1)
    return None


def recover_journal(path: Path, target: Path) -> tuple[int, int]:
    """Copy every complete entry of the journal ``path`` (an entry glued after a torn one
    included) into a new journal file ``target``; returns (entries kept, pieces left out).
    With no entry to keep (not a journal at all), no ``target`` is written."""
    kept: list[dict[str, Any]] = []
    lost = 0
    with path.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n"):  # the torn tail
                lost += 1
                continue
            entry = _entry(line)
            if entry is None:  # damaged, or a torn entry with a complete one glued after it
                lost += 1
                entry = _salvage(line)
            if entry is not None:
                kept.append(entry)
    if not kept:
        return 0, lost
    text = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in kept)
    partial = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    partial.write_text(text, encoding="utf-8")
    partial.replace(target)
    return len(kept), lost


def _quick_check(url: str, path: Path) -> str:
    """``ok``, or what SQLite found wrong, reading ``path`` without writing to it; a file
    that cannot be read now (locked, unreadable) raises its :class:`StorageError`."""
    try:
        connection = sqlite3.connect(
            f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=SQLITE_LOCK_TIMEOUT_SECONDS
        )
        try:
            rows = connection.execute("PRAGMA quick_check").fetchall()
        finally:
            connection.close()
    except sqlite3.OperationalError as e:
        fault = storage_fault(e, url)
        if fault is None:
            raise
        raise fault from e
    except sqlite3.DatabaseError as e:  # not a database, malformed
        return str(e)
    found = [" ".join(str(r[0]).split()) for r in rows]  # one line, whatever SQLite says
    return "ok" if found == ["ok"] else "; ".join(found[:3])


def check_storage(url: str) -> None:
    """Refuse a URL that does not parse and a damaged SQLite study file, before anything
    writes to it; remember ``url`` for the messages of later faults."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    shown = mask_url(url)
    try:
        make_url(url)
    except ValueError as e:  # SQLAlchemy's port parsing: int("abc")
        raise StorageError(
            f"storage {shown!r}: the port in the URL is not a number ({e}); write HOST:PORT "
            "with a numeric port, e.g. localhost:5432"
        ) from e
    except ArgumentError as e:
        raise StorageError(
            f"storage {shown!r} is not a database URL; write sqlite:///FILE.db or "
            "postgresql://USER@HOST/DB"
        ) from e
    OPENED.append(shown)
    journal = journal_path(url)
    if journal is not None and journal.is_file():
        scan = scan_journal(journal)
        if scan.damaged:
            raise StorageError(
                f"storage {shown!r} is damaged ({scan.describe()}); nothing was written to it; "
                f"{RECOVER_HINT}"
            )
        if scan.torn_bytes:  # readers skip it; a writer is refused before it appends
            logger.info("storage %s: %s; read without it", shown, scan.describe())
        return
    path = sqlite_path(url)
    if path is None or not path.is_file() or path.stat().st_size == 0:
        return
    found = _quick_check(url, path)
    if found != "ok":
        raise StorageError(
            f"storage {mask_url(url)!r} is damaged (SQLite quick_check: {found}); nothing was "
            f"written to it; {RECOVER_HINT}"
        )


# Under the cache folder (``gguf.cache_root``): one JSON file per trial left RUNNING by a fault.
DEFERRED_FOLDER = "deferred-failures"


@dataclass(frozen=True)
class DeferredFailure:
    """A trial a storage fault left RUNNING, and the reason it is to end FAIL with."""

    storage: str  # storage_key(url): masked, a file storage by its resolved path
    study: str
    trial: int
    started: str  # the trial's datetime_start (ISO): a trial number reused later is not it
    reason: str

    @property
    def path(self) -> Path:
        return _deferred_folder() / f"{_study_digest(self.storage, self.study)}-{self.trial}.json"

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def storage_key(url: str) -> str:
    """``url`` as deferred failures name it: masked (no credential is ever written), and a
    SQLite or journal file by its resolved path, however the command spelled it."""
    file = file_of(url)
    if file is None:
        return mask_url(url)
    return SCHEMES[scheme_of(url)].prefix + str(file.expanduser().resolve())


def _deferred_folder() -> Path:
    from autoslim.gguf import cache_root

    return cache_root() / DEFERRED_FOLDER


def _study_digest(key: str, study: str) -> str:
    return hashlib.sha256(f"{key}\0{study}".encode()).hexdigest()[:16]


def defer_failure(
    url: str, study: str, trial: int, started: datetime | None, reason: str
) -> Path | None:
    """Keep ``reason`` for trial ``trial`` of ``study`` until a later command can write it;
    returns the file, or None when the cache folder refuses it too (the trial then ends as
    stale, with the heartbeat's generic reason)."""
    deferred = DeferredFailure(
        storage_key(url), study, trial, started.isoformat() if started else "", reason
    )
    path = deferred.path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        partial.write_text(json.dumps(asdict(deferred), indent=1))
        partial.replace(path)
    except OSError as e:
        logger.warning(
            "trial %d: its fail reason cannot be kept in %s either (%s)", trial, path, e
        )
        return None
    return path


def deferred_failures(url: str, study: str) -> list[DeferredFailure]:
    """The failures deferred for ``study`` in the storage ``url``, by trial number (an
    unreadable file is skipped with a warning, never deleted)."""
    key = storage_key(url)
    found = []
    for path in sorted(_deferred_folder().glob(f"{_study_digest(key, study)}-*.json")):
        try:
            deferred = DeferredFailure(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as e:
            logger.warning("deferred trial failure %s is unreadable (%s); left as it is", path, e)
            continue
        if (deferred.storage, deferred.study) == (key, study):
            found.append(deferred)
    return sorted(found, key=lambda d: d.trial)


def writable_folder(folder: Path) -> str | None:
    """None when a file can be created in ``folder``, else why not (nothing is left behind)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as e:
        return e.strerror or type(e).__name__


def backup(path: Path) -> Path:
    """Copy ``path`` (and its write-ahead log) to ``PATH.backup-YYYYmmdd-HHMMSS``, byte for
    byte, without opening it as a database."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.backup-{stamp}")
    shutil.copy2(path, target)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.is_file():
            shutil.copy2(side, target.with_name(target.name + suffix))
    return target


def recover(path: Path, target: Path) -> dict[str, int]:
    """Copy every row SQLite can still read from ``path`` into a new file ``target`` with the
    same schema; returns rows recovered and rows lost per table. When not even the schema can
    be read (``sqlite3.DatabaseError``), no ``target`` is left behind."""
    source = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    out = sqlite3.connect(target)
    counts: dict[str, int] = {}
    try:
        schema = source.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL "
            "AND name NOT LIKE 'sqlite_%' ORDER BY type = 'index'"
        ).fetchall()
    except sqlite3.DatabaseError:
        source.close()
        out.close()
        target.unlink(missing_ok=True)
        raise
    try:
        for kind, _name, sql in schema:
            if kind in ("table", "index"):
                out.execute(sql)
        for kind, name, _sql in schema:
            if kind == "table":
                kept, lost = _copy_rows(source, out, name)
                counts[name] = kept
                if lost:
                    counts[f"{name} (lost)"] = lost
        out.commit()
    finally:
        source.close()
        out.close()
    return counts


def _copy_rows(source: sqlite3.Connection, out: sqlite3.Connection, table: str) -> tuple[int, int]:
    """Rows of ``table`` one rowid at a time, so a damaged page loses only its own rows."""
    quoted = '"' + table.replace('"', '""') + '"'
    try:
        high = source.execute(f"SELECT max(rowid) FROM {quoted}").fetchone()[0] or 0
    except sqlite3.DatabaseError:
        high = 0
    kept = lost = 0
    for rowid in range(1, int(high) + 1):
        try:
            row = source.execute(f"SELECT * FROM {quoted} WHERE rowid = ?", (rowid,)).fetchone()
        except sqlite3.DatabaseError:
            lost += 1
            continue
        if row is None:
            continue
        marks = ", ".join("?" * len(row))
        out.execute(f"INSERT INTO {quoted} VALUES ({marks})", row)
        kept += 1
    return kept, lost
