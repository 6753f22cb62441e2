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
    "knob_groups",
    "knob_table",
    "operator_of",
    "support_matrix",
]


@dataclass
class BuildContext:
    """What an operator's ``apply`` works on: the model being built and shared inputs.

    ``info`` collects JSON-able facts about what changed (stored with the trial);
    ``keep_zero`` maps parameter names to masks that must stay zero through distillation;
    ``kept_layers`` maps the current decoder layers to the base model's layer indices;
    ``removed_channels`` and ``removed_heads`` hold, per current layer, the base model's MLP
    channels and query heads the cuts removed (or masked), for the recovery stage.
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
    removed_channels: list[list[int]] | None = None
    removed_heads: list[list[int]] | None = None


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
    from autoslim.operators import depth, distill, heads, precision, quantize, recovery, width

    return (
        depth.OPERATOR,
        heads.OPERATOR,
        width.OPERATOR,
        recovery.OPERATOR,
        distill.OPERATOR,
        precision.OPERATOR,
        quantize.OPERATOR,
    )


def _knobs() -> dict[str, Knob]:
    from autoslim.runtimes import RUNTIME_KNOB, RUNTIMES

    declared = [RUNTIME_KNOB, *(k for op in OPERATORS for k in op.knobs)]
    declared += [k for runtime in RUNTIMES.values() for k in runtime.knobs]
    return {knob.name: knob for knob in declared}


# In build order; the runtime converts the built model after the last of them.
OPERATORS: tuple[Operator, ...] = _operators()
# In the order a sampler chooses them: each knob's ``active`` may only read knobs before it.
# The runtime comes first (the torch quantization backends and each runtime's own knobs depend
# on it), the runtimes' own knobs last.
KNOBS: dict[str, Knob] = _knobs()
_OWNER = {knob.name: op for op in OPERATORS for knob in op.knobs}


def operator_of(knob: str) -> Operator:
    return _OWNER[knob]


def knob_groups() -> list[tuple[str, str, tuple[Knob, ...]]]:
    """Every knob with the declaration it comes from, in sampling order: (name, doc, knobs)
    for the runtime knob, each operator and each runtime's own knobs."""
    from autoslim.runtimes import RUNTIME_KNOB, RUNTIMES

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
    from autoslim.runtimes import RUNTIMES

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
