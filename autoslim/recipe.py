"""The Recipe: every knob a trial samples, as one immutable value.

Its fields are the knobs the operators declare (``autoslim/operators/``), so a knob added to
an operator is a Recipe field, a search-space param, a study-file key and an ``autoslim
measure`` flag at once. A Recipe converts to and from flat Optuna params, so any stored trial
can be rebuilt exactly from its params alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autoslim.errors import reject_unknown
from autoslim.operators import KNOBS, OPERATORS
from autoslim.operators.heads import format_heads, parse_heads
from autoslim.operators.quantize import BITS, QUANT_TYPES

__all__ = ["BITS", "QUANT_TYPES", "Recipe", "format_heads", "parse_heads"]


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
            if op.check_recipe is not None:
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

    def to_dict(self) -> dict[str, Any]:
        return self.to_params()

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
        from autoslim.runtimes import RUNTIMES

        parts = {op.name: op.describe(self) for op in OPERATORS if op.active(self)}
        runtime = RUNTIMES[self.runtime].describe(self)
        if not any(text for name, text in parts.items() if name != "precision"):
            base = f"base model ({self.precision})"
            return f"{base}, {runtime}" if runtime else base
        return ", ".join(text for text in [*parts.values(), runtime] if text)
