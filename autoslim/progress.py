"""In-trial progress: which stage a trial is in and how far (KD step n/N), from where the work is.

Library code calls :func:`report` (``report("distill", 20, 50)``); it costs nothing unless a
listener is installed. The trial worker installs one that forwards each update over its pipe
(at most every ``FORWARD_SECONDS`` within a stage, at once on a new stage); the study process
passes the latest one on at least every ``SHOW_SECONDS`` (:mod:`autoslim.search.worker`), so what
shows it (the CLI's bars and lines, :mod:`autoslim.cli._progress`) keeps its clocks moving
through a long stage that reports nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

# Within one stage, updates reach the listener at most this often.
FORWARD_SECONDS = 2.0
# The study process passes the running trial's latest stage on at least this often.
SHOW_SECONDS = 1.0


@dataclass(frozen=True)
class TrialProgress:
    """A trial's stage (``distill``, ``measure: workload``…) and, where it counts, steps."""

    stage: str
    step: int = 0
    steps: int = 0

    def describe(self) -> str:
        return f"{self.stage} {self.step}/{self.steps}" if self.steps else self.stage

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Listener = Callable[[TrialProgress], None]
_listener: Listener | None = None
_last: tuple[str, float] = ("", 0.0)


def listen(listener: Listener | None) -> None:
    """Send this process's reports to ``listener`` (None: drop them)."""
    global _listener, _last
    _listener = listener
    _last = ("", 0.0)


def report(stage: str, step: int = 0, steps: int = 0) -> None:
    """Say the running trial is at ``stage`` (step ``step`` of ``steps``)."""
    global _last
    if _listener is None:
        return
    now = time.monotonic()
    last_stage, last_time = _last
    if stage == last_stage and now - last_time < FORWARD_SECONDS and step != steps:
        return
    _last = (stage, now)
    _listener(TrialProgress(stage, step, steps))
