"""How much time and energy matter when one trial is chosen: ``--weights time=W,energy=W`` or a
``--prefer`` preset. Declared apart from :mod:`autoslim.outputs.pick` so the CLI can offer the
presets in ``--help`` without importing Optuna."""

from __future__ import annotations

import math
from dataclasses import dataclass

from autoslim.errors import ConfigError


@dataclass(frozen=True)
class Weights:
    """How much time (seconds) and energy (joules) matter; normalised to sum to 1."""

    time: float
    energy: float

    def __post_init__(self) -> None:
        for name, value in (("time", self.time), ("energy", self.energy)):
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"weight {name}={value!r}: must be a number >= 0")
        total = self.time + self.energy
        if total <= 0:
            raise ConfigError("weights time=0 and energy=0: give at least one weight above 0")
        object.__setattr__(self, "time", self.time / total)
        object.__setattr__(self, "energy", self.energy / total)

    def describe(self) -> str:
        return f"time={self.time:g},energy={self.energy:g}"


PRESETS = {
    "time": Weights(time=0.8, energy=0.2),
    "energy": Weights(time=0.2, energy=0.8),
    "balanced": Weights(time=0.5, energy=0.5),
}


def parse_weights(text: str) -> Weights:
    """``"time=0.7,energy=0.3"`` → Weights; a missing key weighs 0."""
    given: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in ("time", "energy"):
            raise ConfigError(
                f"--weights entry {item!r}: write time=W and/or energy=W, e.g. time=0.7,energy=0.3"
            )
        if key in given:
            raise ConfigError(
                f"--weights {text!r} names {key} twice; give each weight once, e.g. "
                "time=0.7,energy=0.3"
            )
        try:
            given[key] = float(value)
        except ValueError as e:
            raise ConfigError(f"--weights {key}={value.strip()!r}: not a number") from e
    if not given:
        raise ConfigError(f"--weights {text!r}: empty; write e.g. time=0.7,energy=0.3")
    return Weights(time=given.get("time", 0.0), energy=given.get("energy", 0.0))


def weights_from(prefer: str | None, weights: str | None) -> Weights:
    """The weights a command asked for: ``--weights`` or a ``--prefer`` preset (balanced)."""
    if prefer and weights is not None:
        raise ConfigError("give either --prefer or --weights, not both")
    if weights is not None:  # an empty --weights "" is a mistake, not the default
        return parse_weights(weights)
    if prefer is None:
        return PRESETS["balanced"]
    if prefer not in PRESETS:
        raise ConfigError(f"--prefer {prefer!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[prefer]
