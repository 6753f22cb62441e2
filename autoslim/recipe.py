"""The Recipe: every knob a trial samples, as one frozen dataclass.

Everything below the search space takes a Recipe, and a Recipe converts to and from flat
Optuna params, so any stored trial can be rebuilt exactly from its params alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from autoslim.errors import ConfigError, reject_unknown

BITS = (16, 8, 4)
QUANT_TYPES = ("nf4", "fp4")


@dataclass(frozen=True)
class Recipe:
    """One compression recipe, applied as structured prune → drop heads → distil → quantize.

    ``drop_heads`` names heads explicitly as ``(layer, head)`` pairs; ``drop_heads_per_layer``
    instead drops that many of the least important query heads in every layer (chosen at build
    time from the base model, deterministically). At most one of the two is used.
    ``kd_steps=0`` means no distillation.
    """

    bits: int = 16
    quant_type: str = "nf4"
    double_quant: bool = True
    prune_ratio: float = 0.0
    drop_heads: tuple[tuple[int, int], ...] = ()
    drop_heads_per_layer: int = 0
    kd_steps: int = 0
    kd_temperature: float = 2.0
    kd_alpha: float = 0.5
    kd_lr: float = 1e-4

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise ConfigError(f"bits={self.bits!r}: choose one of {BITS} (16 means none)")
        if self.quant_type not in QUANT_TYPES:
            raise ConfigError(f"quant_type={self.quant_type!r}: choose one of {QUANT_TYPES}")
        if not (isinstance(self.prune_ratio, int | float) and 0.0 <= self.prune_ratio < 1.0):
            raise ConfigError(
                f"prune_ratio={self.prune_ratio!r}: must be in [0, 1) (0 = no pruning)"
            )
        if self.drop_heads and self.drop_heads_per_layer:
            raise ConfigError(
                "drop_heads and drop_heads_per_layer are both set; give explicit heads or a "
                "per-layer count, not both"
            )
        if self.drop_heads_per_layer < 0:
            raise ConfigError(f"drop_heads_per_layer={self.drop_heads_per_layer}: must be >= 0")
        for pair in self.drop_heads:
            if len(pair) != 2 or any(not isinstance(x, int) or x < 0 for x in pair):
                raise ConfigError(
                    f"drop_heads entry {pair!r}: must be (layer, head) with non-negative ints"
                )
        if len(set(self.drop_heads)) != len(self.drop_heads):
            raise ConfigError(f"drop_heads {format_heads(self.drop_heads)!r} repeats a head")
        if self.kd_steps < 0:
            raise ConfigError(f"kd_steps={self.kd_steps}: must be >= 0 (0 = no distillation)")
        if not (math.isfinite(self.kd_temperature) and self.kd_temperature > 0):
            raise ConfigError(f"kd_temperature={self.kd_temperature}: must be > 0")
        if not 0.0 <= self.kd_alpha <= 1.0:
            raise ConfigError(
                f"kd_alpha={self.kd_alpha}: must be in [0, 1] (weight of the KD loss)"
            )
        if not (math.isfinite(self.kd_lr) and self.kd_lr > 0):
            raise ConfigError(f"kd_lr={self.kd_lr}: must be > 0")
        object.__setattr__(self, "drop_heads", tuple(sorted(tuple(p) for p in self.drop_heads)))

    @property
    def is_identity(self) -> bool:
        """True when the recipe leaves the base model unchanged."""
        return self == Recipe()

    def to_params(self) -> dict[str, Any]:
        """Flat, JSON-able params (Optuna's shape): heads as ``"layer:head,..."``."""
        params = asdict(self)
        params["drop_heads"] = format_heads(self.drop_heads)
        return params

    def to_dict(self) -> dict[str, Any]:
        return self.to_params()

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Recipe:
        """Rebuild a Recipe from flat params; missing knobs take their defaults."""
        reject_unknown(params, (f.name for f in fields(cls)), "recipe")
        values = dict(params)
        if "drop_heads" in values and isinstance(values["drop_heads"], str):
            values["drop_heads"] = parse_heads(values["drop_heads"])
        if "drop_heads" in values:
            values["drop_heads"] = tuple(tuple(p) for p in values["drop_heads"])
        for key in ("bits", "kd_steps", "drop_heads_per_layer"):
            if key in values:
                values[key] = int(values[key])
        for key in ("prune_ratio", "kd_temperature", "kd_alpha", "kd_lr"):
            if key in values:
                values[key] = float(values[key])
        if "double_quant" in values:
            values["double_quant"] = bool(values["double_quant"])
        return cls(**values)

    def describe(self) -> str:
        parts = []
        if self.prune_ratio:
            parts.append(f"prune {self.prune_ratio:.0%}")
        if self.drop_heads:
            parts.append(f"drop heads {format_heads(self.drop_heads)}")
        if self.drop_heads_per_layer:
            parts.append(f"drop {self.drop_heads_per_layer} heads/layer")
        if self.kd_steps:
            parts.append(f"KD {self.kd_steps} steps T={self.kd_temperature:g}")
        if self.bits == 8:
            parts.append("int8")
        elif self.bits == 4:
            parts.append(self.quant_type + ("+dq" if self.double_quant else ""))
        return ", ".join(parts) or "base model"


def parse_heads(text: str) -> tuple[tuple[int, int], ...]:
    """``"0:1,2:5"`` → ``((0, 1), (2, 5))``; the empty string is no heads."""
    pairs: list[tuple[int, int]] = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        layer, sep, head = item.partition(":")
        if not sep or not layer.strip().isdigit() or not head.strip().isdigit():
            raise ConfigError(
                f"drop-heads entry {item!r}: write LAYER:HEAD pairs separated by commas, "
                "e.g. 0:1,2:5"
            )
        pairs.append((int(layer), int(head)))
    return tuple(sorted(pairs))


def format_heads(pairs: tuple[tuple[int, int], ...]) -> str:
    return ",".join(f"{layer}:{head}" for layer, head in pairs)
