from __future__ import annotations

import io
import itertools
import os
import pty
from typing import Any, TextIO

from autoslim import progress
from autoslim.cli import _progress
from autoslim.cli._progress import StudyProgress
from autoslim.progress import TrialProgress
from autoslim.search.study import Progress


def test_reports_reach_the_listener_on_each_new_stage_and_the_last_step() -> None:
    seen: list[TrialProgress] = []
    progress.listen(seen.append)
    try:
        progress.report("distill", 1, 50)
        progress.report("distill", 2, 50)  # the same stage a moment later: not forwarded
        progress.report("distill", 50, 50)  # the last step always is
        progress.report("measure")
    finally:
        progress.listen(None)
    progress.report("distill", 1, 50)  # no listener: dropped
    assert [p.describe() for p in seen] == ["distill 1/50", "distill 50/50", "measure"]


class Terminal(io.StringIO):
    """What tqdm writes to a terminal, kept."""

    def isatty(self) -> bool:
        return True


def at(done: int, total: int | None = 3, **fields: Any) -> Progress:
    """The study ``done`` trials in, 10 s per trial so far."""
    return Progress(done, total, 10.0 * done, 10.0 * ((total or done) - done), done, **fields)


def shows(stream: TextIO, describe: Any = str, limit: float | None = None) -> StudyProgress:
    return StudyProgress(describe, time_limit_seconds=limit, results=io.StringIO(), stream=stream)


def test_a_terminal_gets_the_study_bar_with_n_of_n_and_the_stage_bar(monkeypatch) -> None:
    monkeypatch.setattr(_progress, "MININTERVAL", 0.0)
    terminal = Terminal()
    shown = shows(terminal, describe=lambda t: f"#{t} int8: perplexity 80")
    shown.update(at(0, message="trial 0: base model"))
    shown.update(at(0, message="trial 0: base model", stage=TrialProgress("distill", 20, 50)))
    drawn = terminal.getvalue()
    assert "study 0/3 trials |" in drawn and "| 0:00:00 elapsed, ETA 0:00:30, Pareto 0" in drawn
    assert "trial 0: base model | distill 20/50 |" in drawn
    shown.update(at(1, trial=0))
    assert "study 1/3 trials |" in terminal.getvalue()
    assert shown.results.getvalue() == (  # type: ignore[attr-defined]
        "[  1/3] 0:00:10 elapsed, ETA 0:00:20, Pareto 1 | #0 int8: perplexity 80\n"
    )
    shown.close()


def test_with_only_a_time_limit_the_study_bar_counts_time(monkeypatch) -> None:
    monkeypatch.setattr(_progress, "MININTERVAL", 0.0)
    terminal = Terminal()
    shown = shows(terminal, limit=300)
    shown.update(at(2, total=None, message="trial 2: int8"))
    assert "study 0:00:20 of 0:05:00, 2 trials, ETA 0:00:00, Pareto 2 |" in terminal.getvalue()
    shown.close()


def test_off_a_terminal_a_long_trial_shows_a_plain_line_at_least_every_30_s(
    monkeypatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(_progress.time, "monotonic", lambda: now[0])
    log = io.StringIO()
    shown = shows(log)
    written: list[float] = []
    # A 5-minute KD stage: the worker passes its latest step on every SHOW_SECONDS and more.
    for tick in range(300):
        now[0] = 1000.0 + tick * (progress.SHOW_SECONDS + 0.5)
        before = log.getvalue().count("\n")
        shown.update(at(1, message="trial 1: int8", stage=TrialProgress("distill", tick, 300)))
        if log.getvalue().count("\n") > before:
            written.append(now[0])
    gaps = [b - a for a, b in itertools.pairwise(written)]
    assert gaps and max(gaps) <= _progress.MAX_SILENT_SECONDS
    assert len(written) <= 300 * (progress.SHOW_SECONDS + 0.5) / _progress.PLAIN_SECONDS + 1
    lines = log.getvalue().splitlines()
    assert lines[0] == (
        "[  1/3] 0:00:10 elapsed, ETA 0:00:20, Pareto 1 | trial 1: int8 | distill 0/300"
    )
    assert "\r" not in log.getvalue() and "|█" not in log.getvalue()
    shown.update(at(1, message="trial 2: int4"))  # a new trial shows at once
    assert log.getvalue().splitlines()[-1].endswith("| trial 2: int4 | starting")


def test_a_terminal_that_reports_no_columns_gets_plain_lines() -> None:
    """tqdm draws nothing on a pseudo-terminal of 0 x 0 (some CI runners, ``docker run -t``)."""
    leader, follower = pty.openpty()
    with os.fdopen(follower, "w") as terminal:
        assert terminal.isatty() and not shows(terminal).tty
    os.close(leader)
