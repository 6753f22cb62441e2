"""The abstract energy meter: a cumulative counter in joules, read at both edges of a window.

A backend implements one narrow method, :meth:`EnergyMeter.counter_joules`, and says how often
its counter updates. Windows are opened with :meth:`EnergyMeter.begin` and closed with
:meth:`EnergyMeter.end`; the caller synchronises the accelerator right before both calls so the
window covers the work and nothing else. A window shorter than the counter's update period, or
one over which the counter did not move, gives ``joules=None`` and a flag, never 0 J.
"""

from __future__ import annotations

import abc
import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar

logger = logging.getLogger(__name__)

# Flags a reading can carry.
SHORT_WINDOW = "window_shorter_than_update_period"
COUNTER_STALLED = "counter_did_not_advance"


@dataclass(frozen=True)
class WindowStart:
    """Where a window began: wall clock (``time.perf_counter``) and counter."""

    wall_s: float
    counter_joules: float


@dataclass(frozen=True)
class EnergyReading:
    """The energy of one window; ``joules`` is None when the meter cannot resolve it."""

    joules: float | None
    seconds: float
    source: str
    flags: tuple[str, ...] = ()


class EnergyMeter(abc.ABC):
    """One energy counter (a GPU, the CPU packages, or an estimate from CPU time)."""

    #: What produced the number, and the meter's name for ``get_meter``: ``"nvml"``...
    source: ClassVar[str]
    #: The ``get_meter`` options this meter takes (keyword arguments of its constructor).
    options: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def for_device(cls, device: Any, **options: Any) -> EnergyMeter:
        """This meter for torch ``device``; UnsupportedError where it cannot measure there."""
        return cls(**options)

    def __init__(self, update_period_s: float) -> None:
        self.update_period_s = update_period_s
        #: Why better meters were passed over (filled in by the ``auto`` factory).
        self.fallback_reasons: dict[str, str] = {}

    @abc.abstractmethod
    def counter_joules(self) -> float:
        """A monotonic cumulative energy reading in joules (wrap-around already undone)."""

    def details(self) -> dict[str, Any]:
        """Backend-specific provenance (devices, zones, watts per core...)."""
        return {}

    def flags(self) -> tuple[str, ...]:
        """Caveats that apply to every reading of this meter."""
        return ()

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "source": self.source,
            "update_period_s": self.update_period_s,
            **self.details(),
        }
        if self.fallback_reasons:
            info["fallback_from"] = dict(self.fallback_reasons)
        return info

    def close(self) -> None:
        """Release the backend (stop threads, shut the library down); nothing by default."""
        return None

    def begin(self) -> WindowStart:
        counter = self.counter_joules()
        return WindowStart(wall_s=time.perf_counter(), counter_joules=counter)

    def end(self, start: WindowStart) -> EnergyReading:
        seconds = time.perf_counter() - start.wall_s
        joules: float | None = self.counter_joules() - start.counter_joules
        flags = list(self.flags())
        if seconds < self.update_period_s:
            flags.append(SHORT_WINDOW)
            joules = None
        elif joules is not None and joules <= 0.0:
            flags.append(COUNTER_STALLED)
            joules = None
        if joules is None:
            logger.info(
                "%s window of %.4f s not resolved (update period %.4f s): %s",
                self.source,
                seconds,
                self.update_period_s,
                ", ".join(flags),
            )
        return EnergyReading(
            joules=joules, seconds=seconds, source=self.source, flags=tuple(flags)
        )

    def __enter__(self) -> EnergyMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
