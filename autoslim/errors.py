"""One exception hierarchy for autoslim.

Every message names the offending key or value and says how to fix it; the CLI prints the
message on one line and exits with status 2.
"""

from __future__ import annotations

from collections.abc import Iterable


class AutoslimError(Exception):
    """Base class of every error autoslim raises on purpose."""


class ConfigError(AutoslimError, ValueError):
    """A user-supplied value (CLI flag, study file key, recipe field) is invalid."""


class ModelError(AutoslimError):
    """A model could not be found or loaded, or is not a causal LM."""


class DataError(AutoslimError):
    """Text data is missing, unreadable or too small for the protocol."""


class UnsupportedError(AutoslimError):
    """An operator, backend or meter is not available for this model or machine."""


class StorageError(AutoslimError):
    """The study storage is damaged, full, read-only, locked or unreachable."""


def reject_unknown(given: Iterable[str], known: Iterable[str], what: str) -> None:
    """Raise ConfigError naming every key of ``given`` that is not ``known``."""
    allowed = sorted(known)
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown {what} key(s) {', '.join(unknown)}; known: {', '.join(allowed)}"
        )
