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

from autoslim.errors import ConfigError

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


def _always(_chosen: Mapping[str, Any]) -> bool:
    return True


@dataclass(frozen=True)
class Knob:
    """One recipe knob: its type, default, allowed values, when it matters and its doc.

    ``active(chosen)`` says whether the knob matters given the knobs declared before it
    (an inactive knob keeps its default and is never sampled). ``search`` is the default
    ``[search]`` entry: a list of choices, a ``{low, high, step}`` range, or a callable of the
    device returning one. ``encode``/``decode`` convert a value to and from its flat,
    JSON-able param (only ``drop_heads`` needs them). ``extreme`` marks a numeric knob whose
    largest value is a corner of the space that decides whether all of it can be built (the
    narrowest shape, the longest distillation).
    """

    name: str
    type: type
    default: Any
    doc: str
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    maximum_exclusive: bool = False
    search: Any = None
    active: Callable[[Mapping[str, Any]], bool] = _always
    encode: Callable[[Any], Any] | None = None
    decode: Callable[[Any], Any] | None = None
    metavar: str | None = None
    allowed_doc: str = ""
    extreme: bool = False

    @property
    def flag(self) -> str:
        """The ``autoslim measure`` flag, named after the knob."""
        return "--" + self.name.replace("_", "-")

    @property
    def rangeable(self) -> bool:
        """Whether a study file may give a ``{low, high}`` range (numbers without choices)."""
        return self.type in (int, float) and not self.choices

    def default_search(self, device: str) -> Any:
        value = self.search(device) if callable(self.search) else self.search
        return [self.to_param(self.default)] if value is None else value

    def allowed(self) -> str:
        """What values are allowed, in words."""
        if self.allowed_doc:
            return self.allowed_doc
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.type is bool:
            return "true or false"
        kind = {int: "an integer", float: "a number", str: "a string"}.get(self.type, "")
        bounds = []
        if self.minimum is not None:
            bounds.append(f">= {self.minimum:g}")
        if self.maximum is not None:
            bounds.append(f"{'<' if self.maximum_exclusive else '<='} {self.maximum:g}")
        return kind + (" " + " and ".join(bounds) if bounds else "")

    def check(self, value: Any) -> Any:
        """``value`` (a param or a Recipe value) coerced to the knob's type, or ConfigError."""
        if self.decode is not None:
            return self.decode(value)
        kind = self.type
        ok = isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise ConfigError(f"{self.name}={value!r}: must be {self.allowed()}")
        if self.choices and value not in self.choices:
            raise ConfigError(f"{self.name}={value!r}: must be {self.allowed()}")
        too_low = self.minimum is not None and not value >= self.minimum
        too_high = self.maximum is not None and not (
            value < self.maximum if self.maximum_exclusive else value <= self.maximum
        )
        if kind in (int, float) and (too_low or too_high or value != value):
            raise ConfigError(f"{self.name}={value!r}: must be {self.allowed()}. {self.doc}")
        return value

    def to_param(self, value: Any) -> Any:
        return self.encode(value) if self.encode is not None else value


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
