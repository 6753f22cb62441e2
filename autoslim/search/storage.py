"""Where a study lives: the storages autoslim opens, declared once.

- ``sqlite:///PATH.db``: one process on one machine (WAL mode, a lock timeout).
- ``journal:///PATH.log``: Optuna's :class:`~optuna.storages.JournalStorage` on a
  :class:`~optuna.storages.journal.JournalFileBackend`: many processes on one machine (or
  containers sharing one volume), no server.
- ``postgresql://USER@HOST/DB``: many machines; connections are pre-pinged so a server
  restart or an idle cut costs a reconnect, not a trial.

Stale trials (their worker was killed, crashed or lost) are found by Optuna's heartbeat where
the storage has one: RDB storages opened with ``heartbeat_seconds`` record a heartbeat per
running trial in the database's own clock (:meth:`~optuna.storages.RDBStorage.record_heartbeat`),
and :func:`optuna.storages.fail_stale_trials` fails the trials silent for longer than the grace
period, then :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback` enqueues each one's
recipe again, once. Optuna's journal storage has no heartbeat (it is not a heartbeat storage,
``tests/study/test_workers.py`` shows it), so there the study writes the same beat into the
trial's ``heartbeat`` user attr and fails silent trials itself with the same grace period.
Neither looks at host names or process ids, so containers that share a hostname but not a
PID namespace never fail each other's live trials.
"""

from __future__ import annotations

import importlib.util
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import optuna

from autoslim.errors import ConfigError
from autoslim.urls import SCHEMES, SQLITE_LOCK_TIMEOUT_SECONDS, file_of, mask_url, scheme_of

logger = logging.getLogger(__name__)

# A running trial silent for this many heartbeats is stale.
GRACE_BEATS = 3
# A stale trial's recipe is tried once more; a retry that goes stale again is not.
MAX_RETRY = 1
# Attempts to open a database whose tables another worker is creating at the same moment.
SCHEMA_RACE_RETRIES = 5


def check_driver(url: str) -> None:
    """Refuse a server URL whose database driver is not installed, naming what to install."""
    scheme = SCHEMES.get(scheme_of(url))
    if scheme is None or not scheme.drivers:
        return
    explicit = url.split(":", 1)[0].partition("+")[2]
    wanted = (explicit,) if explicit else scheme.drivers
    if any(importlib.util.find_spec(module) for module in wanted):
        return
    ours = scheme.extra and set(wanted) <= set(scheme.drivers)
    install = f"pip install 'autoslim[{scheme.extra}]'" if ours else f"pip install {wanted[0]}"
    raise ConfigError(
        f"storage {mask_url(url)!r} needs a database driver ({' or '.join(wanted)}) and none "
        f"is installed; {install}"
    )


def make_storage(url: str, heartbeat_seconds: int | None = None) -> optuna.storages.BaseStorage:
    """The storage behind ``url``. With ``heartbeat_seconds`` an RDB storage records
    heartbeats and retries stale trials (what a worker needs; readers pass nothing)."""
    from autoslim.search import integrity

    scheme = scheme_of(url)
    if scheme not in SCHEMES:
        kinds = ", ".join(f"{s.example} ({s.use})" for s in SCHEMES.values())
        raise ConfigError(
            f"storage {mask_url(url)!r}: unknown kind {scheme!r}; use one of {kinds}"
        )
    check_driver(url)
    integrity.check_storage(url)
    try:
        if scheme == "journal":
            return _journal(url)
        return _rdb(url, heartbeat_seconds)
    except ConfigError:
        raise
    except Exception as e:
        fault = integrity.storage_fault(e, url)
        if fault is not None:
            raise fault from e
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError(
            f"cannot open storage {mask_url(url)!r}: {type(e).__name__}: {mask_url(first)}; "
            "check the server, database name and user"
        ) from e


def _journal(url: str) -> optuna.storages.JournalStorage:
    path = file_of(url)
    if path is None or not path.name:
        raise ConfigError(f"{url!r}: write journal:///PATH/TO/FILE.log")
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(
        JournalFileBackend(str(path), lock_obj=_tail_checked_lock(url, path))
    )


def _tail_checked_lock(url: str, path: Path) -> Any:
    """Optuna's journal lock (the one it uses by default), which refuses to let an entry be
    appended onto an incomplete one (:func:`autoslim.search.integrity.check_journal_tail`): Optuna
    takes it before each append, and every writer appends whole lines under it."""
    from optuna.storages.journal import JournalFileSymlinkLock

    from autoslim.search import integrity

    class TailCheckedLock(JournalFileSymlinkLock):
        def acquire(self) -> bool:
            super().acquire()
            try:
                integrity.check_journal_tail(url, path)
            except BaseException:
                self.release()
                raise
            return True

    return TailCheckedLock(str(path))


def _rdb(url: str, heartbeat_seconds: int | None) -> optuna.storages.RDBStorage:
    url = _with_installed_driver(url)
    sqlite = url.startswith("sqlite")
    engine: dict[str, Any] = (
        {"connect_args": {"timeout": SQLITE_LOCK_TIMEOUT_SECONDS}}
        if sqlite
        else {"pool_pre_ping": True}
    )
    heartbeat: dict[str, Any] = {}
    if heartbeat_seconds is not None:
        heartbeat = {
            "heartbeat_interval": heartbeat_seconds,
            "grace_period": GRACE_BEATS * heartbeat_seconds,
            "heartbeat_stale_trial_callback": retry_callback(),
        }
    storage = _open_rdb(url, engine, heartbeat)
    if sqlite:
        _write_ahead_log(storage.engine)
    return storage


def retry_callback() -> optuna.storages.RetryHeartbeatStaleTrialCallback:
    with warnings.catch_warnings():  # "experimental" since Optuna 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)


def retried_trial_number(trial: optuna.trial.FrozenTrial) -> int | None:
    """The number of the stale trial that ``trial`` retries, if it is a retry."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)


def _open_rdb(
    url: str, engine_kwargs: dict[str, Any], heartbeat: dict[str, Any]
) -> optuna.storages.RDBStorage:
    """Open (and on first use create) Optuna's tables. Workers that start together on an empty
    database race to create them; the losers see the winner's tables half-made (a duplicate
    type or table) and simply open them again once it is done."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(SCHEMA_RACE_RETRIES):
        try:
            with warnings.catch_warnings():  # heartbeat_interval is "experimental"
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)
        except (IntegrityError, ProgrammingError) as e:
            if attempt == SCHEMA_RACE_RETRIES - 1:
                raise
            logger.info("storage schema being created by another worker (%s); retrying", e.orig)
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable: the last attempt returns or raises")


def _with_installed_driver(url: str) -> str:
    """``postgresql://`` means psycopg 3 to SQLAlchemy 2.1; use psycopg2 when only it is
    installed (the ``autoslim[postgres]`` extra)."""
    if not url.startswith("postgresql://"):
        return url
    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2"):
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def _write_ahead_log(engine: Any) -> None:
    """SQLite in WAL mode with normal sync: readers never block the writer and a commit
    costs no fsync (a power cut may lose the last trials, never corrupt the file)."""
    from sqlalchemy import event

    def pragmas(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(engine, "connect", pragmas)
    engine.dispose()


def is_stale(trial: optuna.trial.FrozenTrial, heartbeat_seconds: int, now: float) -> bool:
    """Whether a RUNNING trial's ``heartbeat`` user attr is older than ``GRACE_BEATS`` beats
    (a trial that never beat is never stale, as in Optuna's heartbeat)."""
    beat = trial.user_attrs.get("heartbeat")
    return beat is not None and now - float(beat) > GRACE_BEATS * heartbeat_seconds


def has_heartbeat(storage: optuna.storages.BaseStorage) -> bool:
    """Whether Optuna's heartbeat finds this storage's stale trials."""
    return (
        isinstance(storage, optuna.storages.RDBStorage)
        and storage.get_heartbeat_interval() is not None
    )
