"""Journal-file studies (``journal:///FILE.log``) with a damaged end: the real command in its
own process on a copy of a journal a real search wrote."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tests.faults.conftest import TRIALS, autoslim, study_tables
from tests.faults.table import fault
from tests.study.conftest import write_study

pytestmark = pytest.mark.slow

# What a writer killed mid-append (or a full disk) leaves: an entry without its end.
TORN = b'{"op_code": 5, "worker_id": "x", "trial_id": 3, "user_attr": {"a'


def _completed(log: Path) -> dict[int, tuple[float, ...]]:
    """COMPLETE trials → their values, read with plain Optuna (not autoslim)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(log)))
    study = optuna.load_study(study_name="jr", storage=storage)
    return {
        t.number: tuple(t.values)
        for t in study.get_trials(deepcopy=False)
        if t.state.name == "COMPLETE"
    }


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _study(folder: Path, model_dir: Path, log: Path, **study: object) -> Path:
    return write_study(folder, study_tables(model_dir, storage=f"journal:///{log}", **study), "jr")


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    """The journal file of a study a real search ran to the end."""
    folder = tmp_path_factory.mktemp("journal")
    result = autoslim("search", _study(folder, model_dir, folder / "jr.log"))
    assert result.status == 0, result.err
    assert len(_completed(folder / "jr.log")) == TRIALS
    return folder / "jr.log"


@pytest.fixture()
def copy(journal: Path, model_dir: Path, tmp_path: Path) -> Path:
    """A study file on a private copy of the journal."""
    shutil.copy(journal, tmp_path / "jr.log")
    return _study(tmp_path, model_dir, tmp_path / "jr.log")


@fault(
    "journal file ending in a torn entry (a writer killed mid-append, a full disk)",
    "search",
    "exit 2 before anything is appended: `ends with an incomplete entry …; run autoslim "
    "doctor`; `pick` still reads it; `doctor` backs it up byte for byte and writes every "
    "complete entry to a new file (exit 1), on which `search` resumes",
    "5 → 5 → 7",
)
def test_torn_journal_tail_is_never_appended_onto(journal, copy, model_dir, tmp_path) -> None:
    before = _completed(journal)
    log = tmp_path / "jr.log"
    with log.open("ab") as f:
        f.write(TORN)
    digest = _digest(log)
    result = autoslim("search", copy, "--n-trials", "7")
    assert result.status == 2, result.err
    assert "ends with an incomplete entry (64 bytes after the last complete one" in result.message
    assert "nothing was appended to it; run `autoslim doctor STUDY`" in result.message
    assert _digest(log) == digest, "search appended onto the torn entry"
    assert autoslim("pick", copy).status == 0  # readers skip the torn tail
    doctor = autoslim("doctor", copy)
    assert doctor.status == 1, doctor.err
    assert "integrity    damaged: it ends with an incomplete entry" in doctor.out
    (backup,) = tmp_path.glob("jr.log.backup-*[0-9]")
    assert backup.read_bytes() == log.read_bytes() and _digest(log) == digest
    (recovered,) = tmp_path.glob("jr.recovered-*.log")
    assert "1 incomplete left behind" in doctor.out
    assert recovered.read_bytes() == log.read_bytes()[: -len(TORN)]
    assert _completed(recovered) == before
    resumed = autoslim("search", _study(tmp_path, model_dir, recovered, n_trials=7))
    assert resumed.status == 0, resumed.err
    after = _completed(recovered)
    assert {k: after[k] for k in before} == before and len(after) == 7


@fault(
    "journal file with an entry appended onto a torn one (what earlier versions did)",
    "search / pick / doctor",
    "exit 2 before any write: `is damaged (line N of M is no complete journal entry)`; "
    "`doctor` keeps every complete entry, the glued one included (exit 1)",
)
def test_journal_with_an_entry_glued_to_a_torn_one(journal, copy, tmp_path) -> None:
    before = _completed(journal)
    log = tmp_path / "jr.log"
    lines = log.read_bytes().splitlines(keepends=True)
    glued = json.dumps({"op_code": 0, "worker_id": "w", "study_name": "other", "directions": [1]})
    log.write_bytes(b"".join(lines) + TORN + glued.encode() + b"\n")
    digest = _digest(log)
    for args in (["search", copy, "--n-trials", "7"], ["pick", copy], ["report", copy]):
        result = autoslim(*args)
        assert result.status == 2, result.err
        assert f"is damaged (line {len(lines) + 1} of {len(lines) + 1} is no complete" in (
            result.message
        )
        assert _digest(log) == digest
    doctor = autoslim("doctor", copy)
    assert doctor.status == 1, doctor.err
    (recovered,) = tmp_path.glob("jr.recovered-*.log")
    assert f"({len(lines) + 1} complete entries kept, 1 incomplete left behind)" in doctor.out
    assert "trials       jr: 5 COMPLETE; other: no trials" in doctor.out
    assert _completed(recovered) == before


@fault("sound journal file", "doctor", "exit 0: a byte copy and `integrity ok`")
def test_doctor_on_a_sound_journal_only_backs_it_up(journal, copy, tmp_path) -> None:
    result = autoslim("doctor", copy)
    assert result.status == 0, result.err
    assert "integrity    ok" in result.out and "jr: 5 COMPLETE" in result.out
    (backup,) = tmp_path.glob("jr.log.backup-*[0-9]")
    assert backup.read_bytes() == journal.read_bytes() == (tmp_path / "jr.log").read_bytes()
    assert not list(tmp_path.glob("jr.recovered-*"))


@fault(
    "a journal URL naming a file that is not a journal (a text file)",
    "pick / doctor",
    "`pick` exit 2: `is damaged (lines 1, 2 of 2 are no complete journal entry)`; `doctor` "
    "exit 1: `recovered nothing`, no empty recovered file",
    "—",
)
def test_a_foreign_file_named_as_a_journal(tmp_path) -> None:
    notes = tmp_path / "notes.log"
    notes.write_text("my notes\nnot a journal\n")
    url = f"journal:///{notes}"
    picked = autoslim("pick", url)
    assert picked.status == 2
    assert "is damaged (lines 1, 2 of 2 are no complete journal entry)" in picked.message
    doctor = autoslim("doctor", url)
    assert doctor.status == 1, doctor.err
    assert "recovered    nothing: no line of" in doctor.out
    assert notes.read_text() == "my notes\nnot a journal\n"
    assert not list(tmp_path.glob("*.recovered-*"))


@fault(
    "an empty journal file (no study yet)",
    "pick",
    "exit 2: `holds no study yet; run autoslim search … first` (was `holds 0 studies (none); "
    "name one with --study-name`)",
    "—",
)
def test_an_empty_journal(tmp_path) -> None:
    (tmp_path / "empty.log").touch()
    result = autoslim("pick", f"journal:///{tmp_path / 'empty.log'}")
    assert result.status == 2
    assert "holds no study yet; run `autoslim search` on the study file first" in result.message
