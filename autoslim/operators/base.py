"""What every compression operator is: the :class:`Operator` base class each one subclasses, and
the :class:`BuildContext` its ``apply`` works on. Torch-free."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

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


class Operator(abc.ABC):
    """One compression stage, declared by a subclass (one module of ``autoslim/operators/``).

    Class attributes: ``name``, ``doc``, its ``knobs``, the families it cannot handle and why
    (``unsupported``), and ``cheap`` for stages run before the early-abort check. Methods:
    ``active(recipe)`` says whether it changes the model; ``validate(recipe, config, device)``
    raises ConfigError / UnsupportedError before any work (by default: the family check);
    ``apply(ctx)`` changes ``ctx.model`` in place or replaces it, calling its implementation in
    ``autoslim/compress/``; ``describe(recipe)`` is its part of the recipe's one-line summary;
    ``check_recipe(recipe)`` refuses a combination of its own knobs (nothing by default).
    """

    name: ClassVar[str]
    doc: ClassVar[str]
    knobs: ClassVar[tuple[Knob, ...]]
    unsupported: ClassVar[Mapping[str, str]] = MappingProxyType({})
    cheap: ClassVar[bool] = False

    @abc.abstractmethod
    def active(self, recipe: Any) -> bool:
        """Whether ``recipe`` makes this stage change the model."""

    def validate(self, recipe: Any, config: Any, device: str) -> None:
        """Refuse, before any work, a recipe this model or device cannot take."""
        self.require_family(str(config.model_type))

    @abc.abstractmethod
    def apply(self, ctx: BuildContext) -> None:
        """Change ``ctx.model`` as ``ctx.recipe`` asks; record what changed in ``ctx.info``."""

    @abc.abstractmethod
    def describe(self, recipe: Any) -> str:
        """This stage in the recipe's one-line summary ("" when it does nothing)."""

    def check_recipe(self, recipe: Any) -> None:  # noqa: B027 (a hook: most need none)
        """Refuse a combination of this operator's knobs (nothing by default)."""

    def require_family(self, family: str) -> None:
        if family in self.unsupported:
            raise UnsupportedError(
                f"{self.name} is not supported for {family} models ({self.unsupported[family]})"
            )
