"""The compression operators, each declared once: its knobs, its checks, its support, its apply.

Every table and check that names a knob derives from :data:`OPERATORS`: the :class:`Recipe`
fields and their validation, the search space (``space.py``), study-file parsing
(``config.py``), ``autoslim measure``'s recipe flags, the order ``compress.build`` applies
them in, and README's knob table and support matrix (:func:`knob_table`,
:func:`support_matrix`).

This package never imports torch at import time: an operator's ``validate`` and ``apply``
import their implementation (``autoslim/compress/``) when called, so the CLI's ``--help`` and
study-file checks stay light. A new operator is one module here (its :class:`Operator`) and
one entry in :data:`OPERATORS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from autoslim.knobs import Knob

__all__ = [
    "KNOBS",
    "OPERATORS",
    "BuildContext",
    "Knob",
    "Operator",
    "knob_table",
    "operator_of",
    "support_matrix",
]


@dataclass
class BuildContext:
    """What an operator's ``apply`` works on: the model being built and shared inputs.

    ``info`` collects JSON-able facts about what changed (stored with the trial);
    ``keep_zero`` maps parameter names to masks that must stay zero through distillation;
    ``kept_layers`` maps the current decoder layers to the base model's layer indices.
    """

    model: Any
    recipe: Any
    family: Any
    device: str
    base: Any
    corpus: Any
    teacher_cache: Any = None
    calibration: Any = None
    info: dict[str, Any] = field(default_factory=dict)
    keep_zero: dict[str, Any] = field(default_factory=dict)
    kept_layers: list[int] | None = None


@dataclass(frozen=True)
class Operator:
    """One compression stage.

    ``active(recipe)`` says whether it changes the model; ``validate(recipe, config,
    device)`` raises ConfigError / UnsupportedError before any work; ``apply(ctx)`` changes
    ``ctx.model`` in place or replaces it; ``unsupported`` names the families it cannot
    handle and why; ``cheap`` marks stages run before the early-abort check.
    """

    name: str
    doc: str
    knobs: tuple[Knob, ...]
    active: Callable[[Any], bool]
    validate: Callable[[Any, Any, str], None]
    apply: Callable[[BuildContext], None]
    describe: Callable[[Any], str]
    unsupported: Mapping[str, str] = field(default_factory=dict)
    cheap: bool = False
    check_recipe: Callable[[Any], None] | None = None

    def require_family(self, family: str) -> None:
        from autoslim.errors import UnsupportedError

        if family in self.unsupported:
            raise UnsupportedError(
                f"{self.name} is not supported for {family} models ({self.unsupported[family]})"
            )


def _operators() -> tuple[Operator, ...]:
    from autoslim.operators import depth, distill, heads, precision, quantize, width

    return (
        depth.OPERATOR,
        heads.OPERATOR,
        width.OPERATOR,
        distill.OPERATOR,
        precision.OPERATOR,
        quantize.OPERATOR,
    )


# In build order: each knob's ``active`` may only read knobs declared before it.
OPERATORS: tuple[Operator, ...] = _operators()
KNOBS: dict[str, Knob] = {knob.name: knob for op in OPERATORS for knob in op.knobs}
_OWNER = {knob.name: op for op in OPERATORS for knob in op.knobs}


def operator_of(knob: str) -> Operator:
    return _OWNER[knob]


def knob_table() -> str:
    """README's knob table (markdown), generated from the declarations."""
    rows = [
        "| knob | flag | operator | default | allowed | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for op in OPERATORS:
        for knob in op.knobs:
            default = knob.to_param(knob.default)
            rows.append(
                f"| `{knob.name}` | `{knob.flag}` | {op.name} | `{default!r}` | "
                f"{knob.allowed()} | {knob.doc} |"
            )
    return "\n".join(rows)


def support_matrix(families: tuple[str, ...]) -> str:
    """README's support matrix (markdown): which family each operator handles, and why not."""
    rows = ["| family | " + " | ".join(op.name for op in OPERATORS) + " |"]
    rows.append("|---|" + "---|" * len(OPERATORS))
    for family in families:
        cells = [
            "yes" if family not in op.unsupported else f"no: {op.unsupported[family]}"
            for op in OPERATORS
        ]
        rows.append(f"| {family} | " + " | ".join(cells) + " |")
    return "\n".join(rows)
