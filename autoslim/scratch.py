"""Scratch folders in the system temp folder that a killed process does not leave behind.

A quantization saves a whole model to disk and a runtime conversion writes one or two more
(SmolLM2-135M: 540 MB each); a ``kill -9`` mid-trial or mid-export left them there for good.
Each scratch folder holds ``LOCK``, locked while its process lives: making a new one first
removes those of the same kind whose lock nobody holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK = ".in-use"
# A folder younger than this may not be locked yet by the process that made it.
ABANDONED_AFTER_SECONDS = 60


@contextlib.contextmanager
def scratch_folder(prefix: str) -> Iterator[Path]:
    """A new folder ``PREFIX*`` in the system temp folder, removed on exit, locked meanwhile;
    folders of the same prefix that a killed process left are removed first."""
    root = Path(tempfile.gettempdir())
    for old in root.glob(f"{prefix}*"):
        _remove_if_abandoned(old)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    lock = os.open(folder / LOCK, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield folder
    finally:
        os.close(lock)
        shutil.rmtree(folder, ignore_errors=True)


def _remove_if_abandoned(folder: Path) -> None:
    """Remove ``folder`` when no live process holds its lock (a folder without one is being
    made right now, or is not ours: left alone)."""
    try:
        lock = os.open(folder / LOCK, os.O_WRONLY)
    except OSError:
        return
    try:
        if time.time() - os.fstat(lock).st_mtime < ABANDONED_AFTER_SECONDS:
            return  # made a moment ago: its process may not hold the lock yet
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # its process is alive
        return
    finally:
        os.close(lock)
    logger.info("removing %s, left by a process that was killed while using it", folder)
    shutil.rmtree(folder, ignore_errors=True)
