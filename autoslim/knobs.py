"""A recipe knob, declared once: its type, default, allowed values, when it matters, its doc.

Operators (``autoslim/operators/``) and runtimes (``autoslim/runtimes/``) declare their knobs
with it; :data:`autoslim.recipe.KNOBS` collects them all, in the order a sampler chooses them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from autoslim.errors import ConfigError

__all__ = ["FLOAT_DIGITS", "Knob", "snap_float"]

# Significant digits a float knob keeps: a sampler's step arithmetic (0.1 * 3 =
# 0.30000000000000004) must not make the recipe the build sees as 0.3 a different one.
FLOAT_DIGITS = 12


def snap_float(value: float) -> float:
    """``value`` without the rounding noise of step arithmetic (``FLOAT_DIGITS`` digits)."""
    return float(f"{value:.{FLOAT_DIGITS}g}") if math.isfinite(value) else value


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
        if kind is float:
            value = snap_float(value)
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
