"""The fault suite's table in README, declared once beside each test.

Each test of ``tests/faults/`` carries a :func:`fault` row: what a hostile user (or a bad disk)
does, the command, what autoslim answers, and the completed trials before → after (the test
asserts them). ``python -m tests.faults.table README.md`` rewrites README's block between
``<!-- faults:begin -->`` and ``<!-- faults:end -->``; ``test_readme_table_is_current`` fails
when it is out of date.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., object])

# The test files, in the table's order (by file name: pytest and ``python -m`` import them
# under different module names, and may import one twice).
FILES = ("test_faults", "test_journal", "test_exports")


@dataclass(frozen=True)
class Fault:
    case: str  # what is done to autoslim
    command: str  # the command that meets it
    answer: str  # exit status and the gist of the one-line message (or what is kept)
    trials: str  # completed trials before → after ("—" where no study is involved)


# (file, line of the test, case) → (order of declaration, row): the table follows FILES, then
# each file's order; rows stacked on one test read top to bottom (decorators apply bottom-up).
FAULTS: dict[tuple[str, int, str], tuple[int, Fault]] = {}


def fault(case: str, command: str, answer: str, trials: str = "5 → 5") -> Callable[[F], F]:
    """Declare a README row of the test it decorates (a test may carry several)."""

    def register(test: F) -> F:
        code = test.__code__  # type: ignore[attr-defined]
        key = (Path(code.co_filename).stem, code.co_firstlineno, case)
        FAULTS.setdefault(key, (len(FAULTS), Fault(case, command, answer, trials)))
        return test

    return register


def table() -> str:
    for name in FILES:
        importlib.import_module(f"tests.faults.{name}")
    rows = ["| fault | command | answer | completed trials before → after |", "|---|---|---|---|"]
    for key in sorted(FAULTS, key=lambda k: (FILES.index(k[0]), k[1], -FAULTS[k][0])):
        f = FAULTS[key][1]
        cells = (f.case, f"`{f.command}`", f.answer, f.trials)
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)


PATTERN = "<!-- faults:begin -->\n.*?<!-- faults:end -->"


def block() -> str:
    return f"<!-- faults:begin -->\n{table()}\n<!-- faults:end -->"


def main(path: str = "README.md") -> None:
    readme = Path(path)
    text = readme.read_text(encoding="utf-8")
    readme.write_text(
        re.sub(PATTERN, block().replace("\\", "\\\\"), text, flags=re.S), encoding="utf-8"
    )


if __name__ == "__main__":
    # the tests register their rows in the module `tests.faults.table`, not in `__main__`
    from tests.faults import table as registry

    registry.main(*sys.argv[1:])
