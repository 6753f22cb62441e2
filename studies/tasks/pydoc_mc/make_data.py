"""Write pydoc_mc.jsonl: multiple-choice questions about Python built from the standard
library's own docstrings ("which function does this docstring describe?").

The data file is versioned beside this script so the task is the same on every machine (the
standard library's docstrings differ between Python versions); run this script to rebuild it:

    python studies/tasks/pydoc_mc/make_data.py
"""

from __future__ import annotations

import builtins
import inspect
import json
import random
import textwrap
from pathlib import Path

MODULES = ("builtins", "os", "os.path", "string", "math", "json", "re", "shutil", "random")
N_QUESTIONS = 200
N_CHOICES = 4


def functions() -> list[tuple[str, str]]:
    """(qualified name, first docstring paragraph) of documented public functions."""
    import importlib

    found = []
    for module_name in MODULES:
        module = builtins if module_name == "builtins" else importlib.import_module(module_name)
        for name, value in sorted(vars(module).items()):
            if name.startswith("_") or not callable(value) or inspect.isclass(value):
                continue
            doc = inspect.getdoc(value) or ""
            first = doc.split("\n\n")[0].replace("\n", " ").strip()
            # a docstring that names its function gives the answer away
            if len(first) < 20 or name in first:
                continue
            qualified = name if module_name == "builtins" else f"{module_name}.{name}"
            found.append((qualified, textwrap.shorten(first, 160)))
    return list(dict(found).items())


def main() -> None:
    rng = random.Random(0)
    pool = functions()
    rng.shuffle(pool)
    rows = []
    for name, doc in pool[:N_QUESTIONS]:
        others = rng.sample([n for n, _ in pool if n != name], N_CHOICES - 1)
        choices = [name, *others]
        rng.shuffle(choices)
        rows.append({"doc": doc, "choices": choices, "answer": choices.index(name)})
    out = Path(__file__).with_name("pydoc_mc.jsonl")
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} questions from {len(pool)} documented functions to {out}")


if __name__ == "__main__":
    main()
