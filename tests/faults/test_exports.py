"""Exports over folders the user keeps: the real ``autoslim export`` in its own process on a
study of real builds of a tiny model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults.conftest import ENV, autoslim, completed
from tests.faults.table import fault

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, corpus) -> Path:
    """The SQLite file of a study whose base trial is a real build of a tiny Qwen3."""
    from autoslim.recipe import Recipe
    from autoslim.testing import save_tiny_model
    from autoslim.testing.studies import make_built_study

    root = tmp_path_factory.mktemp("built")
    model = save_tiny_model("qwen3", root / "base")
    make_built_study(f"sqlite:///{root / 'built.db'}", model, corpus, [Recipe()])
    return root / "built.db"


@pytest.fixture()
def exported(built: Path, tmp_path: Path) -> Path:
    """A previous export of trial 0, turned into a git repository with the user's own file."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    out = tmp_path / "ex" / "one"
    result = autoslim("export", built, "--trial", "0", "--out", out)
    assert result.status == 0, result.err
    (out / "eval_results.yaml").write_text("task: mine\n")
    git = ["git", "-C", str(out), "-c", "user.name=u", "-c", "user.email=u@x"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "mine"], check=True)
    return out


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def _real(
    *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``autoslim`` with its real objective, in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "autoslim", *map(str, args)],
        capture_output=True,
        text=True,
        env={**ENV, **(env or {})},
        timeout=600,
    )


def _message(done: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("autoslim ")]
    return line


@fault(
    "`export --force` over a previous export the user made a git repository and added notes to",
    "export --force",
    "exit 0: only the files the previous `autoslim.json` lists (unchanged sha256) are "
    "replaced; `.git/` and `eval_results.yaml` kept and named",
    "1 → 1",
)
def test_force_keeps_what_the_export_did_not_write(built, exported) -> None:
    before = completed(built)
    git = {k: v for k, v in _tree(exported).items() if k.startswith(".git/")}
    result = autoslim("export", built, "--trial", "0", "--out", exported, "--force")
    assert result.status == 0, result.err
    assert "kept, not written by the export: .git/, eval_results.yaml" in result.out
    assert (exported / "eval_results.yaml").read_text() == "task: mine\n"
    assert {k: v for k, v in _tree(exported).items() if k.startswith(".git/")} == git
    status = subprocess.run(
        ["git", "-C", str(exported), "status", "--porcelain"], capture_output=True, text=True
    )
    assert status.returncode == 0 and status.stdout == "", status.stdout  # same files again
    manifest = json.loads((exported / "autoslim.json").read_text())
    assert set(manifest["files"]) | {"autoslim.json", "eval_results.yaml"} == {
        k for k in _tree(exported) if not k.startswith(".git/")
    }
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(".one.")]
    assert completed(built) == before


@fault(
    "`export --force` over a previous export whose model card the user edited",
    "export --force",
    "exit 2 before the rebuild: `README.md changed since the previous export wrote it; --force "
    "never overwrites your changes`; the folder is left as it was",
    "1 → 1",
)
def test_force_never_overwrites_a_file_the_user_changed(built, exported) -> None:
    card = exported / "README.md"
    card.write_text(card.read_text() + "\nMy evaluation notes.\n")
    tree = _tree(exported)
    result = autoslim("export", built, "--trial", "0", "--out", exported, "--force")
    assert result.status == 2
    assert "README.md changed since the previous export wrote it" in result.message
    assert "--force never overwrites your changes" in result.message
    assert _tree(exported) == tree


@fault(
    "`export --force` over a folder whose `autoslim.json` lists `../thesis.tex` (crafted)",
    "export --force",
    "exit 2: `lists '../thesis.tex', outside the folder`; nothing deleted",
    "1 → 1",
)
def test_force_refuses_a_manifest_listing_files_outside_the_folder(built, exported) -> None:
    thesis = exported.parent / "thesis.tex"
    thesis.write_text("years of work")
    manifest = json.loads((exported / "autoslim.json").read_text())
    manifest["files"]["../thesis.tex"] = "0" * 64
    (exported / "autoslim.json").write_text(json.dumps(manifest))
    result = autoslim("export", built, "--trial", "0", "--out", exported, "--force")
    assert result.status == 2
    assert "lists '../thesis.tex', outside the folder" in result.message
    assert thesis.read_text() == "years of work"


@fault(
    "a study measured with `repeats = 1` (its `seconds_cv` is NaN)",
    "search, export, pick --json, report",
    'exit 0 each: the card shows `NaN (not measured)`, JSON the string `"nan"`',
    "— → 1",
)
def test_a_study_measured_with_one_repeat_exports(tmp_path) -> None:
    from autoslim.testing import save_tiny_model
    from tests.study.conftest import TINY_WORKLOAD, write_study

    model = save_tiny_model("qwen3", tmp_path / "model")
    tables = {
        "study": {"n_trials": 1},
        "model": {"name": str(model)},
        "workload": {**TINY_WORKLOAD, "repeats": 1},
        "search": {"precision": ["fp32"], "bits": [16, 8], "quant_backend": ["bitsandbytes"]},
    }
    path = write_study(tmp_path, tables)

    searched = _real("search", path)
    assert searched.returncode == 0, searched.stderr
    exported = _real("export", path, "--trial", "0", "--out", tmp_path / "ex")
    assert exported.returncode == 0, exported.stderr
    card = (tmp_path / "ex" / "README.md").read_text()
    assert "| seconds, coefficient of variation (`seconds_cv`) | NaN (not measured) |" in card
    manifest = json.loads((tmp_path / "ex" / "autoslim.json").read_text())  # strict JSON
    assert manifest["stored_measurement"]["seconds_cv"] == "nan"
    picked = _real("pick", path, "--json")
    assert picked.returncode == 0, picked.stderr
    json.loads(picked.stdout)
    reported = _real("report", path, "--out", tmp_path / "r.html")
    assert reported.returncode == 0, reported.stderr


@fault(
    "a `--model` folder whose `model.safetensors` is cut short",
    "measure",
    "exit 2: `a weights file is damaged or cut short (safetensors: …); copy or download the "
    "model again`",
    "—",
)
def test_a_truncated_weights_file(tmp_path) -> None:
    from autoslim.testing import save_tiny_model

    model = save_tiny_model("qwen3", tmp_path / "model")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    done = _real("measure", "--model", model, "--window", "64")
    assert done.returncode == 2
    assert "a weights file is damaged or cut short (safetensors:" in _message(done)


@fault(
    "`--out` inside a previous export (`ex/one/sub`: nested silently)",
    "export",
    "exit 2 before the rebuild: `is inside the previous export …; choose a folder outside it`",
    "1 → 1",
)
def test_out_inside_a_previous_export(built, exported) -> None:
    result = autoslim("export", built, "--trial", "0", "--out", exported / "sub")
    assert result.status == 2
    assert f"is inside the previous export '{exported}'" in result.message
    assert not (exported / "sub").exists()


@fault(
    "a `--model` folder without tokenizer files",
    "measure",
    "exit 2: `has no tokenizer (none of tokenizer.json, …); copy the tokenizer files` (was "
    "`the text holds 39 tokens, fewer than one perplexity window`)",
    "—",
)
def test_a_model_folder_without_a_tokenizer(tmp_path) -> None:
    from autoslim.testing import save_tiny_model

    model = save_tiny_model("qwen3", tmp_path / "model")
    for path in model.glob("tokenizer*"):
        path.unlink()
    done = _real("measure", "--model", model, "--window", "64")
    assert done.returncode == 2
    assert f"model folder '{model}' has no tokenizer (none of tokenizer.json" in _message(done)


@fault(
    "a process killed (`kill -9`) while its quantization scratch copy of the model is on disk",
    "measure --bits 8 (any later quantization)",
    "exit 0; the abandoned `autoslim-quantize-*` folder (its lock free) is removed",
    "—",
)
def test_a_killed_quantization_leaves_no_scratch_folder(tmp_path) -> None:
    from autoslim.testing import save_tiny_model

    model = save_tiny_model("qwen3", tmp_path / "model")
    temp = tmp_path / "tmp"
    temp.mkdir()
    holder = subprocess.Popen(  # holds a scratch folder as a quantizing export does
        [
            sys.executable,
            "-c",
            "import time; from autoslim.scratch import scratch_folder\n"
            "with scratch_folder('autoslim-quantize-') as folder:\n"
            "    open(folder / 'model.safetensors', 'wb').write(bytes(1 << 20))\n"
            "    print(folder, flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**ENV, "TMPDIR": str(temp)},
    )
    assert holder.stdout is not None
    left = Path(holder.stdout.readline().strip())
    holder.kill()
    holder.wait()
    assert left.is_dir() and left.name.startswith("autoslim-quantize-")
    old = time.time() - 3600  # an hour ago
    os.utime(left / ".in-use", (old, old))
    done = _real(
        "measure", "--model", model, "--window", "64", "--bits", "8", "--quant-backend",
        "bitsandbytes", env={"TMPDIR": str(temp)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert not left.exists()
    assert not list(temp.glob("autoslim-quantize-*"))


@fault(
    "Ctrl-C late in an export, after its success line (while Python shuts down)",
    "export",
    "exit 0 with the success line, no traceback (was: exit 130 `interrupted` after it, or a "
    "`KeyboardInterrupt` traceback from the shutdown)",
    "1 → 1",
)
def test_a_late_ctrl_c_does_not_undo_a_finished_export(built, tmp_path) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "autoslim",
            "export",
            built,
            "--trial",
            "0",
            "--out",
            tmp_path / "ex",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    assert process.stdout is not None
    first = process.stdout.readline()  # written when the command flushes its output
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert first.startswith("exported trial 0 ")
    assert process.returncode == 0, err
    assert "Traceback" not in err and "interrupted" not in err
    assert (tmp_path / "ex" / "autoslim.json").is_file()
