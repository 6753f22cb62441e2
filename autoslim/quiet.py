"""Silence import-time warnings of optional dependencies that no user can act on.

torchao, when installed, is imported by transformers' quantizers on the first model load; on
a CPU machine it warns that its CUDA-only extension libraries fail to load, and torch warns
about a deprecated registration it makes. Neither says anything about the user's model.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

_NOISY = ("torchao", "torch.utils._pytree")


@contextlib.contextmanager
def quiet_imports() -> Iterator[None]:
    """Raise the noisy import-time loggers to ERROR for the duration of the block."""
    loggers = [logging.getLogger(name) for name in _NOISY]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


def import_quantizers() -> None:
    """Import transformers' quantizers (and with them torchao, when installed) quietly."""
    with quiet_imports():
        import transformers.quantizers  # noqa: F401
