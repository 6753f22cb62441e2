"""Exports over folders the user keeps: the real ``autoslim export`` in its own process on a
study of real builds of a tiny model."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.faults.conftest import autoslim, completed
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
