"""The Recipe: every knob a trial samples, as one immutable value.

Its fields are the knobs the operators declare (``autoslim/operators/``), so a knob added to
an operator is a Recipe field, a search-space param, a study-file key and an ``autoslim
measure`` flag at once. A Recipe converts to and from flat Optuna params, so any stored trial
can be rebuilt exactly from its params alone.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autoslim.errors import reject_unknown
from autoslim.knobs import Knob
from autoslim.operators import OPERATORS
from autoslim.operators.heads import format_heads, parse_heads
from autoslim.operators.quantize import BITS, QUANT_TYPES
from autoslim.runtimes import RUNTIME_KNOB, RUNTIMES

__all__ = [
    "BITS",
    "KNOBS",
    "QUANT_TYPES",
    "Recipe",
    "format_heads",
    "knob_groups",
    "knob_table",
    "parse_heads",
    "support_matrix",
]


def _knobs() -> dict[str, Knob]:
    declared = [RUNTIME_KNOB, *(k for op in OPERATORS for k in op.knobs)]
    declared += [k for runtime in RUNTIMES.values() for k in runtime.knobs]
    return {knob.name: knob for knob in declared}


# Every knob, in the order a sampler chooses them: each knob's ``active`` may only read knobs
# before it. The runtime comes first (the torch quantization backends and each runtime's own
# knobs depend on it), then the operators' in build order, the runtimes' own knobs last.
KNOBS: dict[str, Knob] = _knobs()


class Recipe:
    """One compression recipe: the value of every declared knob (defaults for the rest).

    Applied in the operators' order: drop layers → drop heads → structured prune → recovery →
    distil → precision → quantize, then converted into its runtime. Equal recipes compare and
    hash equal; ``replace`` returns a copy with some knobs changed.
    """

    __slots__ = ("_values",)
    _values: dict[str, Any]

    def __init__(self, **values: Any) -> None:
        reject_unknown(values, KNOBS, "recipe")
        checked = {
            name: knob.check(values[name]) if name in values else knob.default
            for name, knob in KNOBS.items()
        }
        object.__setattr__(self, "_values", checked)
        for op in OPERATORS:
            op.check_recipe(self)

    def __getattr__(self, name: str) -> Any:
        if name == "_values":
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"Recipe has no knob {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Recipe is immutable; use recipe.replace(...)")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Recipe) and self._values == other._values

    def __hash__(self) -> int:
        return hash(tuple(self._values.values()))

    def __repr__(self) -> str:
        changed = ", ".join(f"{k}={v!r}" for k, v in self._values.items() if v != KNOBS[k].default)
        return f"Recipe({changed})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Recipe.from_params, (self.to_params(),))

    def replace(self, **changes: Any) -> Recipe:
        return Recipe(**{**self._values, **changes})

    def is_identity(self, precision: str = "fp32") -> bool:
        """True when the recipe leaves a base model held in ``precision`` unchanged."""
        return self == Recipe(precision=precision)

    def to_params(self) -> dict[str, Any]:
        """Every knob as a flat, JSON-able param: heads as ``"layer:head,..."``."""
        return {name: KNOBS[name].to_param(v) for name, v in self._values.items()}

    def active_params(self) -> dict[str, Any]:
        """Only the knobs that matter, in declaration order (what a sampler chooses)."""
        full = self.to_params()
        chosen: dict[str, Any] = {}
        for name, knob in KNOBS.items():
            if knob.active(chosen):
                chosen[name] = full[name]
        return chosen

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Recipe:
        """Rebuild a Recipe from flat params; missing knobs take their defaults."""
        reject_unknown(params, KNOBS, "recipe")
        return cls(**{name: KNOBS[name].check(value) for name, value in params.items()})

    def describe(self) -> str:
        """A one-line summary: the applied stages, or ``base model (PRECISION)`` when only
        the precision is chosen, so base trials at different precisions read apart."""
        parts = {op.name: op.describe(self) for op in OPERATORS if op.active(self)}
        runtime = RUNTIMES[self.runtime].describe(self)
        if not any(text for name, text in parts.items() if name != "precision"):
            base = f"base model ({self.precision})"
            return f"{base}, {runtime}" if runtime else base
        return ", ".join(text for text in [*parts.values(), runtime] if text)


def knob_groups() -> list[tuple[str, str, tuple[Knob, ...]]]:
    """Every knob with the declaration it comes from, in sampling order: (name, doc, knobs)
    for the runtime knob, each operator and each runtime's own knobs."""
    groups: list[tuple[str, str, tuple[Knob, ...]]] = [
        ("runtime", "the engine the built model runs in", (RUNTIME_KNOB,))
    ]
    groups += [(op.name, op.doc, op.knobs) for op in OPERATORS]
    groups += [(f"{r.name} runtime", r.doc, r.knobs) for r in RUNTIMES.values() if r.knobs]
    return groups


def knob_table() -> str:
    """README's knob table (markdown), generated from the declarations, in sampling order."""
    rows = [
        "| knob | flag | operator | default | allowed | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for owner, _, knobs in knob_groups():
        for knob in knobs:
            default = knob.to_param(knob.default)
            rows.append(
                f"| `{knob.name}` | `{knob.flag}` | {owner} | `{default!r}` | "
                f"{knob.allowed()} | {knob.doc} |"
            )
    return "\n".join(rows)


def support_matrix(families: tuple[str, ...]) -> str:
    """README's support matrix (markdown): which family each operator handles and each runtime
    converts, and why not."""
    runtimes = list(RUNTIMES.values())
    rows = [
        "| family | "
        + " | ".join([op.name for op in OPERATORS] + [f"runtime {r.name}" for r in runtimes])
        + " |"
    ]
    rows.append("|---|" + "---|" * (len(OPERATORS) + len(runtimes)))
    for family in families:
        cells = [
            "yes" if family not in op.unsupported else f"no: {op.unsupported[family]}"
            for op in OPERATORS
        ]
        cells += [
            "yes"
            if family not in r.unsupported_families
            else f"no: {r.unsupported_families[family]}"
            for r in runtimes
        ]
        rows.append(f"| {family} | " + " | ".join(cells) + " |")
    for r in runtimes:
        for op, why in r.unsupported_operators.items():
            rows.append(f"\n{r.name} cannot convert a model changed by {op}: {why}.")
    return "\n".join(rows)


def main(path: str = "README.md") -> None:
    """``python -m autoslim.recipe [README.md]``: rewrite README's generated knob table and
    support matrix from the declarations."""
    from autoslim.compress.families import FAMILIES

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
