"""The study files that ship inside the package: ``demo.toml`` and ``example-llama.toml``.

They are package data (``importlib.resources``), so ``pip install autoslim`` is enough for
``autoslim demo`` and ``autoslim init``; ``studies/`` at the repository root holds symlinks
to these files, which stay the one copy.
"""

from __future__ import annotations

import json
import re
from importlib import resources

from autoslim.config import STUDY_NAME
from autoslim.errors import ConfigError

# The commented study that ``autoslim init`` starts from: it shows every key.
TEMPLATE = "example-llama"


def names() -> tuple[str, ...]:
    """The bundled studies, by name (file name without ``.toml``)."""
    folder = resources.files(__name__)
    return tuple(sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml")))


def read_text(name: str) -> str:
    """The text of the bundled study file ``NAME.toml``."""
    if name not in names():
        raise ConfigError(f"no bundled study {name!r}; choose one of {', '.join(names())}")
    return (resources.files(__name__) / f"{name}.toml").read_text(encoding="utf-8")


def _set(text: str, section: str, key: str, value: str) -> str:
    """``text`` with the string value of ``[section] key = ...`` replaced, its comment kept."""
    start = re.search(rf"^\[{re.escape(section)}\]", text, flags=re.MULTILINE)
    if start is None:
        raise ValueError(f"{TEMPLATE}.toml has no [{section}]")
    line = re.compile(rf'^({re.escape(key)} = )"[^"\n]*"', flags=re.MULTILINE)
    found = line.search(text, start.end())
    if found is None:
        raise ValueError(f"{TEMPLATE}.toml has no {section}.{key} string")
    # padded to the old width so the comment after it stays in its column
    line_text = (found.group(1) + json.dumps(value)).ljust(found.end() - found.start())
    return text[: found.start()] + line_text + text[found.end() :]


def init_text(name: str, model: str = "reference", device: str = "cpu") -> str:
    """A commented study file named ``name`` for ``model`` on ``device``: the text of
    ``example-llama.toml`` with its study name, model and device set (every other key and
    comment as they are)."""
    if not STUDY_NAME.fullmatch(name):
        raise ConfigError(f"study name {name!r}: use letters, digits, '-', '_' or '.' only")
    text = read_text(TEMPLATE)
    header, _, body = text.partition("\n\n")
    body = body.replace(f"{TEMPLATE}.db", f"{name}.db")
    body = _set(body, "study", "name", name)
    body = _set(body, "model", "name", model)
    body = _set(body, "model", "device", device)
    lines = header.splitlines()
    intro = [
        f"# Study {name!r}, written by `autoslim init` from autoslim's {TEMPLATE}.toml. Check",
        f"# and run it with `autoslim search {name}.toml --check`, then without --check.",
    ]
    # the template's first two lines say how to copy and run it; the rest is kept
    return "\n".join(intro + lines[2:]) + "\n\n" + body
