"""The search space: the only module that calls ``trial.suggest_*``.

Params are named after Recipe fields, so ``Recipe.from_params(trial.params)`` rebuilds the
recipe. Knobs that only matter for some recipes are suggested only then: the 4-bit type and
double quantization only at 4 bits, the distillation settings only with ``kd_steps > 0``.
A knob fixed in the study file is a one-choice categorical, so it still appears in the params.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import optuna

from autoslim.config import Knob, SearchSpace
from autoslim.errors import ConfigError
from autoslim.recipe import Recipe

# Suggestion order; the conditional knobs come after the knob they depend on.
ORDER = (
    "bits",
    "quant_type",
    "double_quant",
    "prune_ratio",
    "drop_heads",
    "drop_heads_per_layer",
    "kd_steps",
    "kd_temperature",
    "kd_alpha",
    "kd_lr",
)


def _active(name: str, chosen: dict[str, Any]) -> bool:
    """Whether knob ``name`` matters given the knobs already chosen."""
    if name in ("quant_type", "double_quant"):
        return bool(chosen.get("bits") == 4)
    if name in ("kd_temperature", "kd_alpha", "kd_lr"):
        return int(chosen.get("kd_steps", 0)) > 0
    return True


def _suggest(trial: optuna.Trial, knob: Knob) -> Any:
    if knob.range is None:
        return trial.suggest_categorical(knob.name, list(knob.choices))
    r = knob.range
    if r.integer:
        return trial.suggest_int(knob.name, int(r.low), int(r.high), step=int(r.step or 1))
    return trial.suggest_float(knob.name, r.low, r.high, step=r.step, log=r.log)


def suggest_recipe(trial: optuna.Trial, space: SearchSpace) -> Recipe:
    """Sample one Recipe from ``space`` through ``trial``."""
    chosen: dict[str, Any] = {}
    for name in ORDER:
        if _active(name, chosen):
            chosen[name] = _suggest(trial, space[name])
    return Recipe.from_params(chosen)


def params_of(recipe: Recipe, space: SearchSpace) -> dict[str, Any]:
    """The params ``suggest_recipe`` would produce for ``recipe``."""
    full = recipe.to_params()
    chosen: dict[str, Any] = {}
    for name in ORDER:
        if _active(name, chosen):
            chosen[name] = full[name]
    return chosen


def nearest(knob: Knob, wanted: Any) -> Any:
    """The value of ``knob`` closest to ``wanted`` (the first choice for non-numbers)."""
    if knob.range is not None:
        r = knob.range
        value = min(max(float(wanted), r.low), r.high)
        if r.step:
            value = r.low + round((value - r.low) / r.step) * r.step
            value = min(value, r.grid()[-1])
        return round(value) if r.integer else round(value, 10)
    if wanted in knob.choices:
        return wanted
    numbers = [c for c in knob.choices if isinstance(c, int | float) and not isinstance(c, bool)]
    if numbers and isinstance(wanted, int | float):
        return min(numbers, key=lambda c: abs(c - wanted))
    return knob.choices[0]


def snap(recipe: Recipe, space: SearchSpace) -> Recipe:
    """The recipe of ``space`` nearest to ``recipe``, knob by knob."""
    params = params_of(recipe, space)
    return Recipe.from_params({name: nearest(space[name], v) for name, v in params.items()})


def contains(space: SearchSpace, recipe: Recipe) -> bool:
    """Whether ``suggest_recipe`` can return ``recipe``."""
    return snap(recipe, space) == recipe


def known_recipes(space: SearchSpace) -> list[tuple[str, Recipe]]:
    """Known good starting points, snapped into the space, without duplicates.

    int8 and NF4 weight quantization of the unchanged model, and a Minitron-style recipe
    (width pruning of about 30 %, the smallest head drop the space offers, the longest
    distillation it offers at temperature 2).
    """
    heads = [h for h in space["drop_heads"].values() if h]
    per_layer = sorted(v for v in space["drop_heads_per_layer"].extremes() if v)
    minitron = Recipe(
        prune_ratio=0.3,
        drop_heads_per_layer=int(per_layer[0]) if per_layer and not heads else 0,
        kd_steps=int(max(space["kd_steps"].extremes())),
        kd_temperature=2.0,
    )
    if heads:
        explicit = Recipe.from_params({"drop_heads": heads[0]}).drop_heads
        minitron = replace(minitron, drop_heads=explicit)
    wanted = [
        ("int8", Recipe(bits=8)),
        ("nf4", Recipe(bits=4, quant_type="nf4", double_quant=True)),
        ("minitron", minitron),
    ]
    out: list[tuple[str, Recipe]] = []
    seen = {Recipe()}
    for label, recipe in wanted:
        snapped = snap(recipe, space)
        if snapped not in seen:
            seen.add(snapped)
            out.append((label, snapped))
    return out


def grid_space(space: SearchSpace) -> dict[str, list[Any]]:
    """The full grid for ``GridSampler``; every range needs a step (or integer bounds)."""
    grid: dict[str, list[Any]] = {}
    for name, knob in space.knobs.items():
        if knob.range is not None and not (knob.range.integer or knob.range.step):
            raise ConfigError(
                f"search.{name}: the grid sampler needs a step on every float range; "
                f'add step = ... or choose sampler = "tpe"'
            )
        grid[name] = knob.values()
    return grid
