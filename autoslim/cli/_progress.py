"""How the CLI shows long work: tqdm bars on a terminal, plain lines everywhere else.

On a terminal (stderr is a TTY with a size) :class:`StudyProgress` draws one bar for the study
(trials done of ``n_trials``, or the elapsed time against the time limit when only that is
set) and, below it, one for the running trial's stage: a bar with ``n/N`` for a stage that
counts steps (KD ``distill 20/50``, the cost model's KD step at worker start), the stage's own
clock otherwise. The stage comes from the trial worker over its pipe
(:mod:`autoslim.progress`); the worker repeats it every ``progress.SHOW_SECONDS``, so the
clocks move during a stage that reports nothing. tqdm draws at most every ``MININTERVAL``.

Elsewhere (a log file, CI, ``autoslim worker`` in a container, a pseudo-terminal that reports
0 columns, where tqdm draws nothing) a bar would be hidden (tqdm's ``disable=None``) or,
forced, fill the log with carriage returns, so the running trial's status is a plain line,
written when a trial starts and then at most every ``PLAIN_SECONDS``: one at least every
``MAX_SILENT_SECONDS`` however long a stage runs.

Result lines (each finished trial, the cost model) go to ``results`` (stdout; stderr under
``--json``, which keeps stdout to one JSON object) through ``tqdm.write``, which lifts the bars
out of the way.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from tqdm import tqdm

from autoslim import progress
from autoslim.progress import TrialProgress

# tqdm redraws a bar at most this often.
MININTERVAL = 0.5
# Off a terminal, the running trial shows a line at least this often...
MAX_SILENT_SECONDS = 30.0
# ...because its status is repeated after this long: the worker repeats the stage every
# SHOW_SECONDS and polls its pipe every half second, which a repeat may lag behind by.
PLAIN_SECONDS = MAX_SILENT_SECONDS - progress.SHOW_SECONDS - 1.0


def clock(seconds: float) -> str:
    """``H:MM:SS``."""
    whole = round(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def is_terminal(stream: TextIO) -> bool:
    """Whether tqdm can draw on ``stream``: a TTY that reports columns (or reports no size)."""
    if not stream.isatty():
        return False
    try:
        return os.get_terminal_size(stream.fileno()).columns > 0
    except (OSError, ValueError):  # no file descriptor: tqdm falls back to its own width
        return True


class StageBar:
    """The bar (on a terminal) or the plain line (elsewhere) of one running piece of work.

    ``show(status, stage)``: ``status`` names the work (``trial 3: int8``), ``stage`` is its
    latest :class:`TrialProgress`. ``head`` prefixes plain lines (the study's counts). A plain
    line is written for a new status and then every ``PLAIN_SECONDS``; with ``each_stage``,
    for each new stage too (for work of a few long stages: a trial has a dozen).
    """

    def __init__(
        self, stream: TextIO, tty: bool, position: int = 0, *, each_stage: bool = False
    ) -> None:
        self.stream = stream
        self.tty = tty
        self.position = position
        self.each_stage = each_stage
        self._bar: Any = None
        self._key: tuple[str, str, int] | None = None
        self._plain = ("", "")
        self._shown = -float("inf")

    def show(self, status: str, stage: TrialProgress, head: str = "") -> None:
        if self.tty:
            self._draw(status, stage)
            return
        now = time.monotonic()
        plain = (status, stage.stage if self.each_stage else "")
        if plain != self._plain or now - self._shown >= PLAIN_SECONDS:
            line = f"{status} | {stage.describe()}"
            print(f"{head} | {line}" if head else line, file=self.stream, flush=True)
            self._plain, self._shown = plain, now

    def _draw(self, status: str, stage: TrialProgress) -> None:
        key = (status, stage.stage, stage.steps)
        if key != self._key:
            self.close()
            counted = "{n_fmt}/{total_fmt} |{bar}| {elapsed}<{remaining}"
            self._bar = tqdm(
                total=stage.steps or None,
                initial=stage.step,
                desc=f"{status} | {stage.stage}",
                bar_format="{desc} " + (counted if stage.steps else "{elapsed}"),
                file=self.stream,
                mininterval=MININTERVAL,
                miniters=0,
                dynamic_ncols=True,
                position=self.position,
                leave=False,
            )
            self._key = key
        self._bar.update(stage.step - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar = self._key = None
        self._plain = ("", "")


class StudyProgress:
    """Shows a running study: pass each :class:`autoslim.search.study.Progress` to :meth:`update`.

    ``describe`` turns a finished trial into its result line; ``time_limit_seconds`` sets the
    study bar's length when the study has no trial count.
    """

    def __init__(
        self,
        describe: Callable[[Any], str],
        *,
        time_limit_seconds: float | None,
        results: TextIO,
        stream: TextIO | None = None,
    ) -> None:
        self.describe = describe
        self.time_limit_seconds = time_limit_seconds
        self.results = results
        self.stream = stream if stream is not None else sys.stderr
        self.tty = is_terminal(self.stream)
        self.stage = StageBar(self.stream, self.tty, position=1)
        self._study: Any = None

    def update(self, p: Any) -> None:
        if p.notice:
            self.write(p.notice)
        elif p.trial is not None:
            self.stage.close()
            self._draw_study(p)
            self.write(f"{head(p)} | {self.describe(p.trial)}")
        else:
            self._draw_study(p)
            self.stage.show(p.message, p.stage or TrialProgress("starting"), head(p))

    def write(self, line: str) -> None:
        tqdm.write(line, file=self.results)
        self.results.flush()

    def _draw_study(self, p: Any) -> None:
        if not self.tty:
            return
        by_time = p.total is None
        limit = self.time_limit_seconds or 0.0
        eta = clock(p.eta_seconds) if p.eta_seconds is not None else "?"
        figures = f"ETA {eta}, Pareto {p.pareto_size}"
        elapsed = clock(p.elapsed_seconds)
        desc = (
            f"{elapsed} of {clock(limit)}, {p.done} trials, {figures}"
            if by_time
            else f"{elapsed} elapsed, {figures}"
        )
        if self._study is None:
            self._study = tqdm(
                total=limit if by_time else p.total,
                initial=0 if by_time else p.done,
                desc=desc,
                bar_format="study {desc} |{bar}|"
                if by_time
                else "study {n_fmt}/{total_fmt} trials |{bar}| {desc}",
                file=self.stream,
                mininterval=MININTERVAL,
                miniters=0,
                dynamic_ncols=True,
                position=0,
                leave=False,
            )
        self._study.set_description_str(desc, refresh=False)
        now = min(p.elapsed_seconds, limit) if by_time else p.done
        self._study.update(now - self._study.n)

    def close(self) -> None:
        self.stage.close()
        if self._study is not None:
            self._study.close()
        self._study = None


def head(p: Any) -> str:
    """The study's counts: ``[  3/10] 0:01:20 elapsed, ETA 0:04:00, Pareto 2``."""
    total = f"{p.total}" if p.total else "?"
    eta = clock(p.eta_seconds) if p.eta_seconds is not None else "?"
    return (
        f"[{p.done:>3}/{total}] {clock(p.elapsed_seconds)} elapsed, ETA {eta}, "
        f"Pareto {p.pareto_size}"
    )
