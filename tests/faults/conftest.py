"""Fault injection: every case runs the real ``autoslim`` command in its own process on real
files (a copy of a study a real search stored, with the fake objective so no torch model is
trained), and checks the exit status, the one-line message and that the completed trials are
all still there with the same values afterwards."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.study.conftest import FAKE, write_study

# `autoslim` as a user runs it, with the search's objective swapped for the fake one.
BOOT = (
    "import functools, sys; from autoslim.search import study; from autoslim.cli import main; "
    f"study.run_study = functools.partial(study.run_study, objective={FAKE!r}); "
    "sys.exit(main(sys.argv[1:]))"
)
TRIALS = 5


@dataclass
class Result:
    status: int
    out: str
    err: str

    @property
    def message(self) -> str:
        """The one ``autoslim COMMAND: error: ...`` line on stderr (asserted: exactly one,
        and no traceback)."""
        assert "Traceback" not in self.err, self.err
        lines = [line for line in self.err.splitlines() if line.startswith("autoslim ")]
        assert len(lines) == 1, f"expected a one-line message, got:\n{self.err}"
        return lines[0]


ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}


def command(*args: str | Path) -> list[str]:
    return [sys.executable, "-c", BOOT, *map(str, args)]


def autoslim(
    *args: str | Path,
    cwd: Path | None = None,
    timeout: float = 300,
    env: dict[str, str] | None = None,
) -> Result:
    done = subprocess.run(
        command(*args),
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env={**ENV, **(env or {})},
    )
    return Result(done.returncode, done.stdout, done.stderr)


def states(db: Path) -> dict[int, str]:
    with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True) as connection:
        return dict(connection.execute("SELECT number, state FROM trials").fetchall())


def completed(db: Path) -> dict[int, tuple[float, ...]]:
    """COMPLETE trials → their objective values, read with plain sqlite3 (not autoslim)."""
    with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True) as connection:
        rows = connection.execute(
            "SELECT t.number, v.objective, v.value FROM trials t JOIN trial_values v "
            "ON v.trial_id = t.trial_id WHERE t.state = 'COMPLETE' ORDER BY t.number, v.objective"
        ).fetchall()
    out: dict[int, list[float]] = {}
    for number, _objective, value in rows:
        out.setdefault(number, []).append(value)
    return {k: tuple(v) for k, v in out.items()}


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoConfig

    from autoslim.testing import TINY_CONFIGS, TINY_VOCAB

    folder = tmp_path_factory.mktemp("tiny-qwen3")
    AutoConfig.for_model("qwen3", vocab_size=TINY_VOCAB, **TINY_CONFIGS["qwen3"]).save_pretrained(
        folder
    )
    return folder


def study_tables(model_dir: Path, **study: object) -> dict[str, dict[str, object]]:
    return {
        "study": {"n_trials": TRIALS, "trial_timeout_seconds": 60, **study},
        "model": {"name": str(model_dir)},
        "workload": {"protocol": {"window": 128}},  # the tiny model's whole context
        "search": {
            "runtime": ["torch"],  # the harness under test, not the engines
            "precision": ["fp32"],
            "bits": [16, 8, 4],
            "quant_backend": ["bitsandbytes"],
            "drop_heads_per_layer": [0, 2],
            "kd_steps": [0, 20],
        },
    }


@pytest.fixture(scope="session")
def searched(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    """A folder holding ``s.toml`` and ``s.db``: a study a real search ran to the end."""
    folder = tmp_path_factory.mktemp("searched")
    path = write_study(folder, study_tables(model_dir))
    result = autoslim("search", path)
    assert result.status == 0, result.err
    assert len(completed(folder / "s.db")) == TRIALS
    return folder


@pytest.fixture()
def study_copy(searched: Path, tmp_path: Path) -> Path:
    """A private copy of the searched study's folder (a test may break it)."""
    copy = tmp_path / "copy"
    shutil.copytree(searched, copy)
    return copy


@contextlib.contextmanager
def tmpfs(folder: Path, size: str, *options: str) -> Iterator[Path]:
    """A real small file system at ``folder`` (root only: skip with the reason otherwise)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root; this case cannot be injected here")
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join((f"size={size}", *options)), "tmpfs", folder],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()})")
    try:
        yield folder
    finally:
        _unmount(folder)


def _unmount(folder: Path) -> None:
    for _ in range(50):  # a worker process may still be closing its files
        if subprocess.run(["umount", folder], capture_output=True).returncode == 0:
            return
        time.sleep(0.2)
    subprocess.run(["umount", "-l", folder], check=True)


def remount_read_only(folder: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", folder], check=True)
