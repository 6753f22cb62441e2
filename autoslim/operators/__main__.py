"""``python -m autoslim.operators [README.md]``: rewrite README's generated knob table and
support matrix from the operator declarations."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from autoslim.compress import FAMILIES
from autoslim.operators import knob_table, support_matrix


def main(path: str = "README.md") -> None:
    readme = Path(path)
    text = readme.read_text(encoding="utf-8")
    for name, table in (
        ("knobs", knob_table()),
        ("support", support_matrix(tuple(sorted(FAMILIES)))),
    ):
        block = f"<!-- {name}:begin -->\n{table}\n<!-- {name}:end -->"
        pattern = f"<!-- {name}:begin -->\n.*?\n<!-- {name}:end -->"
        text = re.sub(pattern, block.replace("\\", "\\\\"), text, flags=re.S)
    readme.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main(*sys.argv[1:])
