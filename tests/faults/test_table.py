from __future__ import annotations

from pathlib import Path

from tests.faults.table import block

README = Path(__file__).parents[2] / "README.md"


def test_readme_table_is_current() -> None:
    """README's fault table is the one the tests declare (`python -m tests.faults.table
    README.md` rewrites it)."""
    assert block() in README.read_text(encoding="utf-8")
