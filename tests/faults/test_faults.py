"""One test per fault: the real command in its own process, on a copy of a real study.

Each asserts the exit status, the one-line message, and that every trial completed before
the fault is still stored afterwards with the same values.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults.conftest import (
    ENV,
    autoslim,
    command,
    completed,
    remount_read_only,
    states,
    study_tables,
    tmpfs,
)
from tests.faults.table import fault
from tests.study.conftest import postgres_url, write_study

pytestmark = pytest.mark.slow


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _corrupt(db: Path) -> None:
    """Overwrite 4 KB in the middle of the file, as a bad disk sector or a stray write does."""
    data = bytearray(db.read_bytes())
    middle = len(data) // 2 // 4096 * 4096
    data[middle : middle + 4096] = b"\xab" * 4096
    db.write_bytes(bytes(data))


# --- nothing stored is deleted ----------------------------------------------------------------


@fault(
    "`export --out` at the study's folder or its parent, with `--force`",
    "export --force",
    "exit 2: `a file of the study … refused even with --force`",
)
@pytest.mark.parametrize("target", ["folder", "parent"])
def test_export_into_the_study_folder_is_refused_even_with_force(study_copy, target) -> None:
    before = completed(study_copy / "s.db")
    out = study_copy if target == "folder" else study_copy.parent
    result = autoslim("export", study_copy / "s.toml", "--trial", "0", "--out", out, "--force")
    assert result.status == 2
    assert "a file of the study" in result.message and "even with --force" in result.message
    assert (study_copy / "s.toml").is_file()
    assert completed(study_copy / "s.db") == before


@fault(
    "`export --force` over a folder holding the user's thesis",
    "export --force",
    "exit 2: `is not a previous export`; the folder untouched",
)
def test_force_replaces_only_a_previous_export(study_copy, tmp_path) -> None:
    before = completed(study_copy / "s.db")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    result = autoslim("export", study_copy / "s.toml", "--trial", "0", "--out", mine, "--force")
    assert result.status == 2
    assert "is not a previous export" in result.message
    assert (mine / "thesis.tex").read_text() == "years of work"
    assert completed(study_copy / "s.db") == before


@fault(
    "`export --out` on a read-only file system",
    "export",
    "exit 2 before the rebuild: `cannot write in … (Read-only file system)`",
)
def test_export_to_a_read_only_folder_fails_before_the_rebuild(study_copy, tmp_path) -> None:
    before = completed(study_copy / "s.db")
    with tmpfs(tmp_path / "ro", "1m", "ro") as folder:
        result = autoslim("export", study_copy / "s.toml", "--trial", "0", "--out", folder / "x")
    assert result.status == 2
    assert "cannot write in" in result.message and "Read-only file system" in result.message
    # Refused before the rebuild: the study's model has no weights, so a rebuild would fail
    # with a model error instead of this message.
    assert completed(study_copy / "s.db") == before


@fault(
    "`export --trial 7` of a 5-trial study",
    "export",
    "exit 2: `has no such trial`",
)
@pytest.mark.parametrize(("number", "needle"), [(7, "has no such trial")])
def test_unexportable_trial_is_refused(study_copy, tmp_path, number, needle) -> None:
    result = autoslim("export", study_copy / "s.toml", "--trial", str(number), "--out", tmp_path)
    assert result.status == 2 and needle in result.message


# --- no secret leaks --------------------------------------------------------------------------


@fault(
    "a password in the study file's PostgreSQL URL (user:pass, `password=`, `sslpassword=`)",
    "search / search --check / report",
    "exit 2: `holds a credential (…)`; the secret never printed",
    "—",
)
@pytest.mark.parametrize(
    ("storage", "part"),
    [
        ("postgresql://postgres@127.0.0.1/test?password=SECRET1", "password"),
        (
            "postgresql://postgres@127.0.0.1/test?sslpassword=SECRET1&sslmode=require",
            "sslpassword",
        ),
        ("postgresql://bob:SECRET1@127.0.0.1/test", "password"),
    ],
)
def test_credentials_in_a_study_file_are_refused_and_never_shown(
    model_dir, tmp_path, storage, part
) -> None:
    path = write_study(tmp_path, study_tables(model_dir, storage=storage))
    for args in (["search", path], ["search", path, "--check"], ["report", path]):
        result = autoslim(*args)
        assert result.status == 2
        assert f"holds a credential ({part}" in result.message
        assert "SECRET1" not in result.out + result.err


@fault(
    "a URL with secrets given to `pick`, server down",
    "pick",
    "exit 2: `no database server answers there`, URL shown as `bob:***@…`",
    "—",
)
def test_credentials_in_a_study_url_are_masked_in_errors(tmp_path) -> None:
    url = "postgresql://bob:SECRET1@127.0.0.1:1/test?sslpassword=SECRET2"
    result = autoslim("pick", url)
    assert result.status == 2
    assert "no database server answers there" in result.message
    assert "bob:***@127.0.0.1:1" in result.message
    assert "SECRET" not in result.out + result.err


@fault(
    "`autoslim worker` with a password in its PostgreSQL URL",
    "worker",
    "exit 0; the stored config holds `***` (skipped without the local server)",
    "0 → 1",
)
def test_a_worker_url_with_a_password_is_stored_masked(model_dir, tmp_path) -> None:
    """The one way a credential reaches a study: `autoslim worker URL` (study files refuse
    them). The worker stores its configuration, URL included, in the study."""
    import json
    import uuid

    url = postgres_url()
    if url is None:
        pytest.skip("PostgreSQL at 127.0.0.1:5432 (database 'test') is unreachable")
    name = f"faults_{uuid.uuid4().hex[:8]}"
    path = write_study(tmp_path, study_tables(model_dir, storage=url, n_trials=1), name)
    try:
        assert (created := autoslim("search", path)).status == 0, created.err
        secret = url.replace("@", ":SECRET1@", 1)  # trust auth: the password is not checked
        joined = autoslim("worker", secret, "--study-name", name)
        assert joined.status == 0, joined.err
        assert "SECRET1" not in joined.out + joined.err
        import psycopg2

        with psycopg2.connect(url) as connection, connection.cursor() as cursor:
            cursor.execute(
                "SELECT a.value_json FROM study_user_attributes a JOIN studies s "
                "ON s.study_id = a.study_id WHERE s.study_name = %s AND a.key = 'config'",
                (name,),
            )
            (stored,) = cursor.fetchone()
        assert json.loads(stored)["study"]["storage"] == url.replace("@", ":***@", 1)
    finally:
        import optuna

        from autoslim.search.storage import make_storage

        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=name, storage=make_storage(url))


# --- storage faults ---------------------------------------------------------------------------


@fault(
    "4 KB of the SQLite file overwritten (a bad sector)",
    "search / report / pick",
    "exit 2 before any write: `is damaged (SQLite quick_check: …)`, names `autoslim doctor`",
)
def test_corrupted_sqlite_is_refused_before_any_write(study_copy) -> None:
    db = study_copy / "s.db"
    _corrupt(db)
    digest = _digest(db)
    for args in (
        ["search", study_copy / "s.toml"],
        ["report", study_copy / "s.toml", "--out", study_copy / "r.html"],
        ["pick", study_copy / "s.toml"],
    ):
        result = autoslim(*args)
        assert result.status == 2, result.err
        assert "is damaged (SQLite quick_check:" in result.message
        assert "autoslim doctor" in result.message
        assert _digest(db) == digest, f"{args[0]} wrote into the damaged file"


@fault(
    "the same damaged SQLite file",
    "doctor",
    "exit 1: a byte-for-byte backup, every readable row in `NAME.recovered-STAMP.db`",
)
def test_doctor_backs_up_and_recovers_the_trials(searched, study_copy) -> None:
    before = completed(searched / "s.db")
    db = study_copy / "s.db"
    _corrupt(db)
    digest = _digest(db)
    result = autoslim("doctor", study_copy / "s.toml")
    assert result.status == 1, result.err
    (backup,) = study_copy.glob("s.db.backup-*[0-9]")
    assert _digest(backup) == digest and _digest(db) == digest
    (recovered,) = study_copy.glob("s.recovered-*.db")
    assert f"recovered    {recovered}" in result.out
    assert completed(recovered) == before
    again = autoslim("pick", f"sqlite:///{recovered}")
    assert again.status == 0, again.err


@fault(
    "a sound SQLite file",
    "doctor",
    "exit 0: a backup and `integrity ok`",
)
def test_doctor_on_a_sound_file_only_backs_it_up(study_copy) -> None:
    before = completed(study_copy / "s.db")
    result = autoslim("doctor", study_copy / "s.toml")
    assert result.status == 0, result.err
    assert "integrity    ok" in result.out and "s: 5 COMPLETE" in result.out
    assert len(list(study_copy.glob("s.db.backup-*[0-9]"))) == 1
    assert completed(study_copy / "s.db") == before


def _wait_for_running(db: Path, process: subprocess.Popen[str], seconds: float = 120) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        try:
            running = [n for n, s in states(db).items() if s == "RUNNING"]
        except sqlite3.OperationalError:  # the search has not made the file or tables yet
            running = []
        if running:
            return running[0]
        time.sleep(0.2)
    raise AssertionError("no trial started")


@fault(
    "the disk fills up mid-trial (2 MB tmpfs; root only)",
    "search",
    "exit 2: `the disk is full; free space …`; the trial FAILs with it on the next run",
    "5 → 5 → 7",
)
def test_disk_full_mid_trial(searched, model_dir, tmp_path) -> None:
    before = completed(searched / "s.db")
    cache = {"AUTOSLIM_CACHE": str(tmp_path / "cache")}  # where the deferred reason is kept
    with tmpfs(tmp_path / "small", "2m") as disk:
        shutil.copy(searched / "s.db", disk / "s.db")
        path = write_study(disk, study_tables(model_dir, n_trials=7))
        process = subprocess.Popen(
            command("search", path),
            env={**ENV, **cache, "AUTOSLIM_FAKE_SLEEP": "4"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        in_flight = _wait_for_running(disk / "s.db", process)
        with (disk / "filler").open("wb", buffering=0) as filler, pytest.raises(OSError):
            while True:
                filler.write(b"\0" * 65536)
        _, err = process.communicate(timeout=120)
        assert process.returncode == 2, err
        lines = [line for line in err.splitlines() if line.startswith("autoslim ")]
        assert "Traceback" not in err
        full = (
            f"storage 'sqlite:///{disk / 's.db'}': the disk is full; free space on the disk "
            "that holds it and run the command again; completed trials are kept"
        )
        assert lines == [f"autoslim search: error: {full}"]
        assert completed(disk / "s.db") == before
        assert states(disk / "s.db")[in_flight] == "RUNNING"  # the storage took no write
        (disk / "filler").unlink()
        doctor = autoslim("doctor", path, env=cache)
        assert doctor.status == 0, doctor.err
        assert f"deferred     s trial {in_flight}: stays RUNNING until the next" in doctor.out
        for backup in disk.glob("s.db.backup-*"):  # room the resumed search needs on 2 MB
            backup.unlink()
        resumed = autoslim("search", path, env=cache)
        assert resumed.status == 0, resumed.err
        after = completed(disk / "s.db")
        assert {k: after[k] for k in before} == before
        assert states(disk / "s.db")[in_flight] == "FAIL"
        # failed with the fault's own reason as soon as the storage took a write, not later
        # as stale with the heartbeat's generic "its worker stopped mid-trial"
        assert _reason(disk / "s.db", in_flight) == f"Interrupted: {full}; recipe retried"
        assert "RUNNING" not in states(disk / "s.db").values()
        assert not list((tmp_path / "cache").rglob("*.json")), "the deferred reason was kept"


@fault(
    "the study's file system remounted read-only (root only)",
    "search / pick",
    "exit 2: `exists but is not writable` / `read-only`",
)
def test_read_only_storage(searched, model_dir, tmp_path) -> None:
    before = completed(searched / "s.db")
    with tmpfs(tmp_path / "ro", "4m") as disk:
        shutil.copy(searched / "s.db", disk / "s.db")
        path = write_study(disk, study_tables(model_dir))
        remount_read_only(disk)
        result = autoslim("search", path, "--n-trials", "7")
        assert result.status == 2
        assert "s.db' exists but is not writable" in result.message
        shown = autoslim("pick", disk / "s.db")
        assert shown.status == 2
        assert "read-only" in shown.message, shown.message
        subprocess.run(["mount", "-o", "remount,rw", disk], check=True)
        assert completed(disk / "s.db") == before


@fault(
    "another process holds a write lock on the SQLite file",
    "search",
    "exit 2: `another process holds a lock on it`",
)
def test_locked_database(study_copy) -> None:
    db = study_copy / "s.db"
    before = completed(db)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True); time.sleep(120)",
            str(db),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        result = autoslim("search", study_copy / "s.toml", "--n-trials", "7")
    finally:
        holder.kill()
        holder.wait()
    assert result.status == 2
    assert "another process holds a lock on it" in result.message
    assert completed(db) == before


@fault(
    "PostgreSQL URL with a closed port, a non-numeric or out-of-range port",
    "pick",
    "exit 2: `no database server answers there` / `the port in the URL is not a number`",
    "—",
)
@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("postgresql://postgres@127.0.0.1:1/test", "no database server answers there"),
        ("postgresql://postgres@127.0.0.1:abc/test", "the port in the URL is not a number"),
        ("postgresql://postgres@127.0.0.1:99999/test", "the port in the URL is not a number"),
    ],
)
def test_unreachable_postgresql_and_bad_ports(url, needle) -> None:
    result = autoslim("pick", url)
    assert result.status == 2
    assert needle in result.message and "127.0.0.1" in result.message


@fault(
    "a non-numeric port in the study file's URL",
    "search --check",
    "exit 2: `a port must be a number`",
    "—",
)
def test_bad_port_in_a_study_file(model_dir, tmp_path) -> None:
    path = write_study(
        tmp_path, study_tables(model_dir, storage="postgresql://u@127.0.0.1:abc/test")
    )
    result = autoslim("search", path, "--check")
    assert result.status == 2 and "a port must be a number" in result.message


@fault(
    '`storage = "sqlite:////proc/s.db"`',
    "search --check",
    "exit 2: `folder '/proc' is not writable`",
    "—",
)
def test_proc_storage_is_refused_by_check(model_dir, tmp_path) -> None:
    path = write_study(tmp_path, study_tables(model_dir, storage="sqlite:////proc/s.db"))
    result = autoslim("search", path, "--check")
    assert result.status == 2
    assert "folder '/proc' is not writable" in result.message


# --- processes that die -----------------------------------------------------------------------


@fault(
    "the search killed mid-trial (`kill -9` of its group, or Ctrl-C)",
    "search, then again",
    "Ctrl-C: exit 130 `interrupted`; resumed: exit 0, the trial FAIL `Interrupted…`, retried",
    "5 → 5 → 7",
)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_mid_trial_then_resumed(searched, model_dir, tmp_path, sig) -> None:
    before = completed(searched / "s.db")
    shutil.copy(searched / "s.db", tmp_path / "s.db")
    path = write_study(tmp_path, study_tables(model_dir, n_trials=7))
    process = subprocess.Popen(
        command("search", path),
        env={**ENV, "AUTOSLIM_FAKE_SLEEP": "30"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    in_flight = _wait_for_running(tmp_path / "s.db", process)
    time.sleep(1)
    os.killpg(process.pid, sig) if sig == signal.SIGKILL else process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert process.returncode == 130 and "autoslim search: interrupted" in err
        assert "Traceback" not in err
        assert states(tmp_path / "s.db")[in_flight] == "FAIL"
    assert completed(tmp_path / "s.db") == before
    resumed = autoslim("search", path)
    assert resumed.status == 0, resumed.err
    assert states(tmp_path / "s.db")[in_flight] == "FAIL"
    # the reason as every command reads it: a trial failed as stale by Optuna's heartbeat
    # carries no fail_reason attr (a finished trial cannot be written), Ctrl-C's does
    assert "Interrupted" in _reason(tmp_path / "s.db", in_flight)
    after = completed(tmp_path / "s.db")
    assert {k: after[k] for k in before} == before and len(after) == 7


def _reason(db: Path, number: int) -> str:
    import optuna

    from autoslim.search.trials import record

    (study,) = optuna.get_all_study_summaries(f"sqlite:///{db}")
    loaded = optuna.load_study(study_name=study.study_name, storage=f"sqlite:///{db}")
    return record(loaded.trials[number], loaded.metric_names or ["perplexity"]).reason


@fault(
    "two searches on one SQLite study at once",
    "search ×2",
    "exit 0 both",
    "5 → ≥ 9",
)
def test_two_searches_on_one_sqlite_study(searched, model_dir, tmp_path) -> None:
    before = completed(searched / "s.db")
    shutil.copy(searched / "s.db", tmp_path / "s.db")
    path = write_study(tmp_path, study_tables(model_dir, n_trials=9))
    processes = [
        subprocess.Popen(command("search", path), env=ENV, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    assert [p.wait(timeout=300) for p in processes] == [0, 0]
    after = completed(tmp_path / "s.db")
    assert {k: after[k] for k in before} == before and len(after) >= 9


# --- honest messages --------------------------------------------------------------------------


@fault(
    "an empty study file",
    "search",
    "exit 2: `the study file is empty`; no database made",
    "—",
)
def test_empty_study_file_is_refused(tmp_path) -> None:
    path = tmp_path / "empty.toml"
    path.write_text("")
    result = autoslim("search", path)
    assert result.status == 2 and "the study file is empty" in result.message
    assert not (tmp_path / "empty.db").exists()


@fault(
    "`-v` after the subcommand",
    "search --check -v",
    "exit 0",
)
def test_verbose_after_the_subcommand(study_copy) -> None:
    result = autoslim("search", study_copy / "s.toml", "--check", "-v")
    assert result.status == 0 and "valid" in result.out


@fault(
    "`pick --json | true` (the reader gone)",
    "pick --json",
    "exit 141, no `BrokenPipeError`",
)
def test_pick_json_into_a_closed_pipe_exits_quietly(study_copy) -> None:
    # `| true` closes the pipe before autoslim writes (what `| head -1` does to long output).
    shell = subprocess.run(
        f"{subprocess.list2cmdline(command('pick', study_copy / 's.toml', '--json'))} | true;"
        " echo status ${PIPESTATUS[0]}",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert shell.stdout.splitlines() == ["status 141"]
    assert "BrokenPipeError" not in shell.stderr and "Traceback" not in shell.stderr


@fault(
    "a negative `--max-ppl-increase`; `--n-trials 0` without a time limit",
    "pick / search",
    "exit 2: `must be >= 0` / `is 0 and no time_limit_seconds is set`",
)
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            ["pick", "{toml}", "--max-ppl-increase", "-0.5"],
            "--max-ppl-increase -0.5: must be >= 0",
        ),
        (["search", "{toml}", "--n-trials", "0"], "is 0 and no time_limit_seconds is set"),
    ],
)
def test_impossible_budgets(study_copy, args, needle) -> None:
    before = completed(study_copy / "s.db")
    result = autoslim(*(a.format(toml=study_copy / "s.toml") for a in args))
    assert result.status == 2 and needle in result.message
    assert completed(study_copy / "s.db") == before


@fault(
    "a report of a study whose only trial was killed (then its heartbeat an hour old)",
    "report",
    "exit 0: `no completed trial yet (1 running, …)`, then `stopped without finishing`",
    "0 → 0",
)
def test_report_of_a_study_with_no_completed_trial(model_dir, tmp_path) -> None:
    import optuna

    path = write_study(tmp_path, study_tables(model_dir))
    process = subprocess.Popen(
        command("search", path),
        env={**ENV, "AUTOSLIM_FAKE_SLEEP": "60"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    base = _wait_for_running(tmp_path / "s.db", process)
    os.killpg(process.pid, signal.SIGKILL)  # killed in its base-model trial
    process.communicate(timeout=60)
    live = tmp_path / "live.html"
    result = autoslim("report", path, "--out", live)
    assert result.status == 0, result.err
    assert "notice: study 's' has no completed trial yet (1 running, 3 waiting)" in result.out
    assert live.stat().st_size < 100_000  # a notice, no plotly bundle for empty axes
    # An hour later its heartbeat is an hour old: the trial is dead, not "running".
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    study_id = storage.get_study_id_from_name("s")
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, base)
    storage.set_trial_user_attr(trial_id, "heartbeat", time.time() - 3600)
    dead = tmp_path / "dead.html"
    result = autoslim("report", path, "--out", dead)
    assert result.status == 0, result.err
    assert "1 stopped without finishing (no heartbeat for over " in result.out
    assert "running" not in result.out
    page = dead.read_text()
    assert "has no completed trial yet" in page and "1 running" not in page


@fault(
    "`export --trial N` of a trial that raised or segfaulted",
    "export",
    "exit 2: `--trial N is FAIL (…), so there is nothing to export`",
    "5 → 5",
)
def test_failed_and_crashed_trials_are_not_exported(searched, model_dir, tmp_path) -> None:
    before = completed(searched / "s.db")
    shutil.copy(searched / "s.db", tmp_path / "s.db")
    path = write_study(tmp_path, study_tables(model_dir, n_trials=8))
    run = subprocess.run(
        command("search", path),
        env={**ENV, "AUTOSLIM_FAKE_FAULTS": "8:raise,4:segfault"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    failed = [n for n, s in states(tmp_path / "s.db").items() if s == "FAIL"]
    assert failed, "the injected faults failed no trial"
    for number in failed:
        result = autoslim("export", path, "--trial", str(number), "--out", tmp_path / "x")
        assert result.status == 2
        assert f"--trial {number} is FAIL (" in result.message
        assert "so there is nothing to export" in result.message
    after = completed(tmp_path / "s.db")
    assert {k: after[k] for k in before} == before
    assert not (tmp_path / "x").exists()


@fault(
    "`report --out` naming the study's .db or .toml",
    "report",
    "exit 2: `is not an HTML page`; the file untouched",
)
@pytest.mark.parametrize("victim", ["s.db", "s.toml"])
def test_report_never_overwrites_a_study_file(study_copy, victim) -> None:
    before = completed(study_copy / "s.db")
    digest = _digest(study_copy / victim)
    result = autoslim("report", study_copy / "s.toml", "--out", study_copy / victim)
    assert result.status == 2 and "is not an HTML page" in result.message
    assert _digest(study_copy / victim) == digest
    assert completed(study_copy / "s.db") == before
    again = autoslim("report", study_copy / "s.toml", "--out", study_copy / "r.html")
    assert again.status == 0, again.err
    assert autoslim("report", study_copy / "s.toml", "--out", study_copy / "r.html").status == 0


# --- a study resumed with something changed ---------------------------------------------------


@fault(
    "`[workload]` changed before a resume (repeats 5 → 1)",
    "search",
    "exit 2: `was created with a different workload.repeats (5 → 1)`; the stored config kept",
)
def test_changed_workload_is_refused_on_resume(study_copy, model_dir) -> None:
    before = completed(study_copy / "s.db")
    tables = study_tables(model_dir, n_trials=7)
    tables["workload"] = {**tables["workload"], "repeats": 1}
    path = write_study(study_copy, tables)
    result = autoslim("search", path)
    assert result.status == 2
    assert "was created with a different workload.repeats (5 → 1)" in result.message
    assert "Set a new [study].name" in result.message
    assert completed(study_copy / "s.db") == before
    with sqlite3.connect(study_copy / "s.db") as connection:
        (stored,) = connection.execute(
            "SELECT value_json FROM study_user_attributes WHERE key = 'config'"
        ).fetchone()
    assert "repeats" not in json.loads(stored)["workload"]


@fault(
    'a relative `storage = "journal:///jr.log"`, worker started from another folder',
    "search",
    "exit 0: the path is relative to the study file's folder, so both runs share one study",
    "0 → 5 → 7",
)
def test_relative_storage_follows_the_study_file(model_dir, tmp_path) -> None:
    here, elsewhere = tmp_path / "studies", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    path = write_study(here, study_tables(model_dir, storage="journal:///jr.log"))
    first = autoslim("search", path, cwd=elsewhere)
    assert first.status == 0, first.err
    assert (here / "jr.log").is_file() and not list(elsewhere.iterdir())
    again = autoslim("search", path, "--n-trials", "7", cwd=here)
    assert again.status == 0, again.err
    import optuna
    from optuna.storages.journal import JournalFileBackend

    journal = optuna.storages.JournalStorage(JournalFileBackend(str(here / "jr.log")))
    trials = optuna.load_study(study_name="s", storage=journal).get_trials(deepcopy=False)
    assert sum(t.state.name == "COMPLETE" for t in trials) == 7
    assert not list(elsewhere.iterdir())


@fault(
    "a 252-character study name",
    "search --check / init / report",
    "exit 2 before any file: `study.name: … is 252 characters; at most 128`; `report` of a "
    "study another tool named so writes `report-NAME[:128].html`",
    "—",
)
def test_a_study_name_too_long_for_a_file_name(model_dir, study_copy, tmp_path) -> None:
    name = "a" * 252
    path = write_study(tmp_path, study_tables(model_dir, name=name))
    for args in (["search", path, "--check"], ["init", name]):
        result = autoslim(*args, cwd=tmp_path)
        assert result.status == 2
        assert "is 252 characters; at most 128, so the files named after it" in result.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "s.toml"]
    with sqlite3.connect(study_copy / "s.db") as connection:  # renamed by another tool
        connection.execute("UPDATE studies SET study_name = ?", (name,))
    report = autoslim("report", study_copy / "s.db", cwd=study_copy)
    assert report.status == 0, report.err
    assert (study_copy / f"report-{'a' * 128}.html").is_file()


@fault(
    "a known recipe at `prune_ratio` 0.3 and a sampled 0.30000000000000004 (step arithmetic)",
    "search",
    "exit 0: the sampled one is PRUNED as a duplicate (floats compared as the build sees them); "
    "no recipe measured twice",
    "0 → 6 (the space holds 6 recipes)",
)
def test_float_noise_does_not_measure_a_recipe_twice(model_dir, tmp_path) -> None:
    tables = study_tables(model_dir, n_trials=7, sampler="random")
    tables["search"] = {
        "runtime": ["torch"],  # not every runtime installed here: the space is these 6 recipes
        "precision": ["fp32"],
        "bits": [16],
        "quant_backend": ["bitsandbytes"],
        "prune_ratio": {"low": 0.0, "high": 0.5, "step": 0.1},
        "prune_importance": ["activation"],
        "drop_heads_per_layer": [0],
        "kd_steps": [0],
        "kd_temperature": [2.0],
    }
    path = write_study(tmp_path, tables)
    result = autoslim("search", path)
    assert result.status == 0, result.err
    with sqlite3.connect(tmp_path / "s.db") as connection:
        ratios = [
            value
            for (value,) in connection.execute(
                "SELECT p.param_value FROM trials t JOIN trial_params p ON p.trial_id = "
                "t.trial_id WHERE t.state = 'COMPLETE' AND p.param_name = 'prune_ratio'"
            )
        ]
        noisy = connection.execute(
            "SELECT count(*) FROM trial_params WHERE param_name = 'prune_ratio' "
            "AND param_value != round(param_value, 9)"
        ).fetchone()[0]
    assert noisy, "the sampler proposed no noisy float: the case was not exercised"
    assert sorted(round(r, 9) for r in ratios) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]


@fault(
    "the base-model trial fails (a task function raising on it), then the user resumes",
    "search",
    "exit 2 naming the base trial's reason; on resume the base runs first, the recipes queued "
    "before it are put back behind it (PRUNED, not counted) and all complete",
    "0 → 0 → 3",
)
def test_a_failed_base_trial_runs_first_on_resume(model_dir, tmp_path) -> None:
    path = write_study(tmp_path, study_tables(model_dir, n_trials=3))
    failed = autoslim("search", path, env={"AUTOSLIM_FAKE_FAULTS": "16:raise"})
    assert failed.status == 2
    assert "the base-model trial 0 failed (RuntimeError: injected failure" in failed.message
    assert states(tmp_path / "s.db") == {0: "FAIL", 1: "WAITING", 2: "WAITING"}
    resumed = autoslim("search", path)
    assert resumed.status == 0, resumed.err
    assert "reached n_trials=3" in resumed.out
    assert "BaseModelUnknown" not in resumed.out + resumed.err
    with sqlite3.connect(tmp_path / "s.db") as connection:
        rows = connection.execute(
            "SELECT t.number, t.state, a.key FROM trials t LEFT JOIN trial_user_attributes a "
            "ON a.trial_id = t.trial_id AND a.key IN ('is_base', 'known', 'waits_for_base') "
            "ORDER BY t.number"
        ).fetchall()
    complete = [(n, key) for n, state, key in rows if state == "COMPLETE"]
    assert complete == [(3, "is_base"), (4, "known"), (5, "known")]  # the base first
    assert [(n, s) for n, s, key in rows if key == "waits_for_base"] == [
        (1, "PRUNED"),
        (2, "PRUNED"),
    ]


@fault(
    "the base model timed with a 17 % CV (a busy machine), quantized trials timed quietly",
    "pick / report / export --no-retime",
    "`pick` and the report: `no candidate can be recommended until the base model is "
    "re-timed`, the base's figure beside each candidate; `export --no-retime` without "
    "`--trial` exit 2",
    "0 → 3",
)
def test_no_recommendation_while_the_base_timing_is_held_back(model_dir, tmp_path) -> None:
    path = write_study(tmp_path, study_tables(model_dir, n_trials=3))
    searched = autoslim("search", path, env={"AUTOSLIM_FAKE_FAULTS": "16:noisy"})
    assert searched.status == 0, searched.err
    picked = autoslim("pick", path)
    assert picked.status == 0, picked.err
    (line,) = [x for x in picked.out.splitlines() if x.startswith(("chosen", "no recommendation"))]
    assert line.startswith(
        "no recommendation: no candidate can be recommended until the base model is re-timed: "
        "its own timing is held back (trial 0: seconds CV 17% > 10%)"
    )
    assert "trial 1 (int8) 1.15 s (base 1)" in line
    report = autoslim("report", path, "--out", tmp_path / "r.html")
    assert report.status == 0, report.err
    assert "no candidate can be recommended until the base model is re-timed" in (
        (tmp_path / "r.html").read_text()
    )
    export = autoslim("export", path, "--no-retime", "--out", tmp_path / "x")
    assert export.status == 2
    assert "no candidate can be recommended until" in export.message
    assert "drop --no-retime), or name the trial with --trial N" in export.message
    assert not (tmp_path / "x").exists()


@fault(
    "a range whose `step` does not divide it (`prune_ratio` 0..0.5 step 0.2)",
    "search --check",
    "exit 2: `search.prune_ratio.step: 0.2 does not divide the range 0.0..0.5 (the sampler "
    "would cut it to 0.0..0.4)`",
    "—",
)
@fault(
    "a storage path that is a symlink to a device (`/dev/null`)",
    "search --check",
    "exit 2: `is not a regular file (…, through the link to '/dev/null')`",
    "—",
)
@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (
            {"search": {"prune_ratio": {"low": 0.0, "high": 0.5, "step": 0.2}}},
            "search.prune_ratio.step: 0.2 does not divide the range 0.0..0.5 (the sampler "
            "would cut it to 0.0..0.4); use a step that divides 0.5, or high = 0.4",
        ),
        (
            {"study": {"storage": "sqlite:///null.db"}},
            "study.storage: '{folder}/null.db' is not a regular file (a device, pipe or socket, "
            "through the link to '/dev/null'); name a database file",
        ),
    ],
)
def test_study_file_mistakes_found_by_check(model_dir, tmp_path, change, needle) -> None:
    (tmp_path / "null.db").symlink_to("/dev/null")
    tables = study_tables(model_dir)
    for table, values in change.items():
        tables[table] = {**tables[table], **values}
    result = autoslim("search", write_study(tmp_path, tables), "--check")
    assert result.status == 2
    assert needle.format(folder=tmp_path) in result.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null.db", "s.toml"]


@fault(
    "a study file saved with a UTF-8 byte-order mark (Windows editors)",
    "search --check",
    "exit 0: read like any other (it was `not valid TOML … line 1, column 1`)",
    "—",
)
def test_a_study_file_with_a_byte_order_mark(model_dir, tmp_path) -> None:
    path = write_study(tmp_path, study_tables(model_dir))
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    result = autoslim("search", path, "--check")
    assert result.status == 0, result.err
    assert "valid (study 's')" in result.out


@fault(
    "an unknown storage URL scheme (`foo://x/y`)",
    "pick",
    "exit 2: `unknown kind 'foo'; use one of sqlite:///FILE.db …` (was SQLAlchemy's "
    "`NoSuchModuleError … check the server`)",
    "—",
)
def test_an_unknown_storage_scheme() -> None:
    result = autoslim("pick", "foo://x/y")
    assert result.status == 2
    assert "storage 'foo://x/y': unknown kind 'foo'; use one of sqlite:///FILE.db" in (
        result.message
    )


@fault(
    "`--weights` naming a weight twice (`time=1,time=0`: the last silently won)",
    "pick",
    "exit 2: `--weights 'time=1,time=0' names time twice; give each weight once`",
)
@fault(
    'an empty `--weights ""` (the default was silently used)',
    "pick",
    "exit 2: `--weights '': empty; write e.g. time=0.7,energy=0.3`",
)
@pytest.mark.parametrize(
    ("weights", "needle"),
    [
        ("time=1,time=0", "--weights 'time=1,time=0' names time twice; give each weight once"),
        ("", "--weights '': empty; write e.g. time=0.7,energy=0.3"),
    ],
)
def test_bad_weights(study_copy, weights, needle) -> None:
    result = autoslim("pick", study_copy / "s.toml", "--weights", weights)
    assert result.status == 2 and needle in result.message


@fault(
    "`doctor` on a file that is not SQLite at all (a text file)",
    "doctor",
    "exit 1 as README says (was 2): `recovered nothing: SQLite reads no table from …`; no "
    "empty `*.recovered-*.db` left",
    "—",
)
def test_doctor_on_a_file_that_is_not_sqlite(tmp_path) -> None:
    notes = tmp_path / "notes.db"
    notes.write_text("my notes, not a database\n")
    result = autoslim("doctor", notes)
    assert result.status == 1, result.err
    assert "recovered    nothing: SQLite reads no table from" in result.out
    assert notes.read_text() == "my notes, not a database\n"
    assert not list(tmp_path.glob("*.recovered-*"))
