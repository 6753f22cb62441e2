"""The notebooks run as written: quickstart's code cells in order, and explore_study.ipynb
end to end in a real Jupyter kernel (nbclient) on a tiny study of real builds.

``python -m tests.test_notebooks`` re-executes explore_study.ipynb the same way and writes it
back with its outputs (what is committed).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from autoslim.recipe import Recipe
from autoslim.testing import save_tiny_model
from autoslim.testing.studies import make_built_study

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"
EXPLORE = NOTEBOOKS / "explore_study.ipynb"
# base, int8 and a pruned recipe: a front, one trial over the 0.5 budget or not, an export
RECIPES = (Recipe(), Recipe(bits=8), Recipe(prune_ratio=0.5, drop_heads_per_layer=2))


def test_quickstart_builds_a_smaller_model_and_measures_what_it_cost():
    path = NOTEBOOKS / "quickstart.ipynb"
    namespace: dict[str, Any] = {}
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), path.name, "exec"), namespace)
    before, after = namespace["before"], namespace["after"]
    # 4-bit NF4 weights and a quarter of the MLP gone: what the cells print is what happened
    assert after.size_bytes < 0.6 * before.size_bytes
    assert after.perplexity > before.perplexity and after.teacher_kl > 0
    assert namespace["result"].info["mlp_fraction_removed"] > 0


def tiny_study(folder: Path, corpus) -> tuple[str, str]:
    """A study of real builds of a tiny Qwen3 in ``folder``: (storage URL, study name)."""
    storage = f"sqlite:///{folder / 'tiny.db'}"
    model = save_tiny_model("qwen3", folder / "base")
    make_built_study(storage, model, corpus, RECIPES, study_name="tiny", max_ppl_increase=0.5)
    return storage, "tiny"


def execute_explore(folder: Path, corpus, setenv=os.environ.__setitem__) -> Any:
    """explore_study.ipynb executed in a fresh kernel on a tiny study under ``folder``; the
    kernel finds the study through the environment ``setenv`` sets."""
    nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[dev]'")
    import nbformat

    storage, name = tiny_study(folder, corpus)
    setenv("AUTOSLIM_STORAGE", storage)
    setenv("AUTOSLIM_STUDY_NAME", name)
    setenv("AUTOSLIM_EXPORT_DIR", str(folder / "exports"))
    notebook = nbformat.read(EXPLORE, as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3").execute(cwd=str(folder))
    return notebook


def stderr_of(notebook: Any) -> str:
    """Everything the notebook's cells wrote to stderr."""
    outputs = (o for c in notebook.cells for o in c.get("outputs", []))
    return "".join(o.get("text", "") for o in outputs if o.get("name") == "stderr")


@pytest.mark.slow
def test_explore_study_runs_end_to_end(tmp_path, corpus, monkeypatch):
    notebook = execute_explore(tmp_path, corpus, monkeypatch.setenv)
    # no dependency noise opens the outputs (optuna's tqdm asking for ipywidgets, torchao)
    assert stderr_of(notebook) == ""
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(c.outputs for c in code)  # every cell printed or drew something
    figures = [
        o for c in code for o in c.outputs if "application/vnd.plotly.v1+json" in o.get("data", {})
    ]
    assert len(figures) == 5  # 3 pairs + the 3D front, and Optuna's own
    text = "".join(o.get("text", "") for o in code[-1].outputs)
    assert "exported trial" in text and "def fibonacci(n):" in text
    assert any((tmp_path / "exports").glob("trial-*/README.md"))


def test_committed_notebook_keeps_its_outputs():
    import nbformat

    notebook = nbformat.read(EXPLORE, as_version=4)
    assert all(c.outputs for c in notebook.cells if c.cell_type == "code")
    assert stderr_of(notebook) == ""  # what `python -m tests.test_notebooks` writes


if __name__ == "__main__":
    import nbformat

    from autoslim import data

    with tempfile.TemporaryDirectory() as folder:
        nbformat.write(execute_explore(Path(folder), data.stdlib_corpus()), EXPLORE)
    print(f"wrote {EXPLORE} with its outputs")
