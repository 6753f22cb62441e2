"""Timeouts on the trial's own clock, with real processes: a trial starved of CPU by other
processes on its core runs to its end; a hang on the same busy core is still killed."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from autoslim.progress import TrialProgress
from autoslim.recipe import Recipe
from autoslim.search.config import load
from autoslim.search.worker import Worker
from tests.study.conftest import FAKE

pytestmark = pytest.mark.skipif(
    not os.path.exists("/proc/self/task/") or not hasattr(os, "sched_setaffinity"),
    reason="needs Linux schedstat and CPU affinity",
)

INT8 = Recipe(bits=8, quant_backend="bitsandbytes")


@contextlib.contextmanager
def fake_worker(study_file, monkeypatch, fault: str) -> Iterator[Worker]:
    monkeypatch.setenv("AUTOSLIM_FAKE_FAULTS", f"8:{fault}")
    monkeypatch.setenv("AUTOSLIM_FAKE_CPU_SECONDS", "1.0")
    worker = Worker(load(study_file(), check_model=False), FAKE, start_timeout=120)
    worker.start()
    try:
        yield worker
    finally:
        worker.close()


@contextlib.contextmanager
def a_hog_on_its_core(pid: int | None) -> Iterator[None]:
    """A busy process pinned with ``pid`` to one core: ``pid`` gets at most half of it (less
    when the machine is busy, but not so little that the 10x wall-time cap is reached)."""
    assert pid is not None
    core = {min(os.sched_getaffinity(pid))}
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])]
    try:
        for p in (pid, *(h.pid for h in hogs)):
            os.sched_setaffinity(p, core)
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def test_a_cpu_starved_trial_runs_past_its_wall_time_and_reports_progress(
    study_file, monkeypatch
) -> None:
    seen: list[TrialProgress] = []
    with (
        fake_worker(study_file, monkeypatch, "burn") as worker,
        a_hog_on_its_core(worker.pid),
    ):
        result = worker.run(INT8, 1.5, on_progress=seen.append)
    assert result.status == "done", result.reason
    # 1 s of its own CPU took at least 2 s of wall time, past the 1.5 s limit: a wall-clock timeout
    # would have killed this healthy trial.
    assert result.wall_seconds > 1.5
    assert result.worker["own_seconds"] < 1.5
    assert TrialProgress("burn", 10, 10) in seen


def test_a_hang_on_a_busy_core_is_still_killed(study_file, monkeypatch) -> None:
    with fake_worker(study_file, monkeypatch, "hang") as worker:
        pid = worker.pid
        with a_hog_on_its_core(pid):
            result = worker.run(INT8, 2.0)
        assert not worker.alive
    assert result.status == "timeout"
    assert re.match(r"TrialTimeout: no result after \d+ s of its own time", result.reason)
    assert "limit 2 s" in result.reason
