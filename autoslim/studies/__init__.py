"""The study files that ship inside the package: ``demo.toml`` and ``example-llama.toml``.

They are package data (``importlib.resources``), so ``pip install autoslim`` is enough for
``autoslim demo`` and ``autoslim init``; ``studies/`` at the repository root holds symlinks
to these files, which stay the one copy.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

from autoslim.errors import ConfigError
from autoslim.search.config import study_name_problem

# The commented study that ``autoslim init`` starts from: it shows every key.
TEMPLATE = "example-llama"


def names() -> tuple[str, ...]:
    """The bundled studies, by name (file name without ``.toml``)."""
    folder = resources.files(__name__)
    return tuple(sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml")))


def path(name: str) -> Path:
    """The file of the bundled study ``NAME.toml`` (an installed package is a folder)."""
    if name not in names():
        raise ConfigError(f"no bundled study {name!r}; choose one of {', '.join(names())}")
    return Path(str(resources.files(__name__) / f"{name}.toml"))


def read_text(name: str) -> str:
    """The text of the bundled study file ``NAME.toml``."""
    return path(name).read_text(encoding="utf-8")


def _find(text: str, section: str, key: str) -> re.Match[str]:
    """Where ``[section] key = VALUE`` is in ``text`` (a string or a one-line list; group 2)."""
    start = re.search(rf"^\[{re.escape(section)}\]", text, flags=re.MULTILINE)
    if start is None:
        raise ValueError(f"{TEMPLATE}.toml has no [{section}]")
    line = re.compile(rf'^({re.escape(key)} = )("[^"\n]*"|\[[^\]\n]*\])', flags=re.MULTILINE)
    found = line.search(text, start.end())
    if found is None:
        raise ValueError(f"{TEMPLATE}.toml has no {section}.{key} string or list")
    return found


def _set(text: str, section: str, key: str, value: str | list[str]) -> str:
    """``text`` with the value of ``[section] key = ...`` replaced, its comment kept."""
    found = _find(text, section, key)
    # padded to the old width so the comment after it stays in its column
    line_text = (found.group(1) + json.dumps(value)).ljust(found.end() - found.start())
    return text[: found.start()] + line_text + text[found.end() :]


def init_text(
    name: str, model: str = "reference", device: str = "cpu", context: int | None = None
) -> str:
    """A commented study file named ``name`` for ``model`` on ``device``: the text of
    ``example-llama.toml`` with its study name, model and device set, and its perplexity window
    shortened to ``context`` (the model's context length, when known) if it is longer; every
    other key and comment as they are (its precision is left out, so the study searches what
    ``device`` computes natively)."""
    if (problem := study_name_problem(name)) is not None:
        raise ConfigError(f"study name {problem}")
    text = read_text(TEMPLATE)
    header, _, body = text.partition("\n\n")
    body = body.replace(f"{TEMPLATE}.db", f"{name}.db")
    body = _set(body, "study", "name", name)
    body = _set(body, "model", "name", model)
    body = _set(body, "model", "device", device)
    window = re.search(r"^protocol = \{ window = (\d+)", body, flags=re.MULTILINE)
    if window is None:
        raise ValueError(f"{TEMPLATE}.toml has no workload.protocol window")
    if context is not None and int(window.group(1)) > context:
        body = body[: window.start(1)] + str(context) + body[window.end(1) :]
    lines = header.splitlines()
    intro = [
        f"# Study {name!r}, written by `autoslim init` from autoslim's {TEMPLATE}.toml. Check",
        f"# and run it with `autoslim search {name}.toml --check`, then without --check.",
    ]
    # the template's first two lines say how to copy and run it; the rest is kept
    return "\n".join(intro + lines[2:]) + "\n\n" + body
