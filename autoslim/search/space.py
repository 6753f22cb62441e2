"""The search space: the only module that calls ``trial.suggest_*``.

Params are named after the operators' knobs, suggested in declaration order, and only when
they matter (``Knob.active``): the 4-bit type only for bitsandbytes 4-bit, the distillation
settings only with ``kd_steps > 0``. A knob the study file fixes to one value is not an
Optuna param at all (it would fill importance charts with zeros); it is part of every
trial's stored recipe and of the study's stored config.
"""

from __future__ import annotations

from typing import Any

import optuna

from autoslim.errors import ConfigError
from autoslim.recipe import KNOBS, Recipe
from autoslim.runtimes import RUNTIMES
from autoslim.search.config import SearchedKnob, SearchSpace

ORDER = tuple(KNOBS)


def _suggest(trial: optuna.Trial, knob: SearchedKnob) -> Any:
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
        if KNOBS[name].active(chosen):
            knob = space[name]
            chosen[name] = knob.choices[0] if knob.fixed else _suggest(trial, knob)
    return Recipe.from_params(chosen)


def params_of(recipe: Recipe, space: SearchSpace) -> dict[str, Any]:
    """The Optuna params ``suggest_recipe`` would produce for ``recipe`` (fixed knobs left out)."""
    return {k: v for k, v in recipe.active_params().items() if not space[k].fixed}


def nearest(knob: SearchedKnob, wanted: Any) -> Any:
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
    """The recipe of ``space`` nearest to ``recipe``, knob by knob (in declaration order, so a
    knob that becomes inactive once an earlier one moves keeps its default)."""
    wanted = recipe.to_params()
    chosen: dict[str, Any] = {}
    for name in ORDER:
        if KNOBS[name].active(chosen):
            chosen[name] = nearest(space[name], wanted[name])
    return Recipe.from_params(chosen)


def contains(space: SearchSpace, recipe: Recipe) -> bool:
    """Whether ``suggest_recipe`` can return ``recipe``."""
    return snap(recipe, space) == recipe


def known_recipes(space: SearchSpace, base: Recipe) -> list[tuple[str, Recipe]]:
    """Known good starting points, snapped into the space, without duplicates.

    The base model at every other precision the space offers (what a dtype cast alone buys),
    in every other runtime of the space and with that runtime's 8-bit weights, 8-bit and
    4-bit weight quantization of the unchanged model, and a Minitron-style recipe
    (width pruning of about 30 %, the smallest head drop the space offers, the longest
    distillation it offers at temperature 2).
    """
    heads = [h for h in space["drop_heads"].values() if h]
    per_layer = sorted(v for v in space["drop_heads_per_layer"].extremes() if v)
    minitron = base.replace(
        prune_ratio=0.3,
        prune_importance="activation",
        drop_heads=heads[0] if heads else (),
        drop_heads_per_layer=int(per_layer[0]) if per_layer and not heads else 0,
        kd_steps=int(max(space["kd_steps"].extremes())),
        kd_temperature=2.0,
    )
    wanted = [(p, base.replace(precision=p)) for p in space["precision"].values()]
    for runtime in space["runtime"].values():
        if runtime != base.runtime:
            in_runtime = base.replace(runtime=runtime)
            eight_bit = RUNTIMES[runtime].with_weight_bits(in_runtime, 8)
            wanted += [(runtime, in_runtime), (f"{runtime} int8", eight_bit)]
    for backend in space["quant_backend"].values():
        wanted += [
            (f"{backend} int8", base.replace(bits=8, quant_backend=backend)),
            (f"{backend} 4-bit", base.replace(bits=4, quant_backend=backend)),
        ]
    wanted.append(("minitron", minitron))
    out: list[tuple[str, Recipe]] = []
    seen = {base}
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
        if knob.fixed:
            continue
        if knob.range is not None and not (knob.range.integer or knob.range.step):
            raise ConfigError(
                f"search.{name}: the grid sampler needs a step on every float range; "
                f'add step = ... or choose sampler = "tpe"'
            )
        grid[name] = knob.values()
    return grid
