"""What every compression operator is: its :class:`Operator` declaration and the
:class:`BuildContext` its ``apply`` works on. Torch-free."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from autoslim.errors import UnsupportedError
from autoslim.knobs import Knob

__all__ = ["BuildContext", "Operator"]


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
        if family in self.unsupported:
            raise UnsupportedError(
                f"{self.name} is not supported for {family} models ({self.unsupported[family]})"
            )
