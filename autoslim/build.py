"""validate and build: one compressed model from one Recipe.

The operators (``autoslim/operators/``) run in their declared order: drop layers → drop heads
→ structured prune → recovery → distil → precision → quantize. The base model is never
modified: the stages work on an fp32 deep copy (lossless from any stored dtype), recovery and
distillation learn from the base model's outputs (distillation in the recipe's precision, from
its cached outputs), the precision stage casts, and quantization hands the result to the
recipe's backend.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from autoslim import progress
from autoslim.compress.distill import TeacherCache
from autoslim.compress.families import family_of
from autoslim.compress.size import parameter_count
from autoslim.data import Corpus
from autoslim.models import LoadedModel
from autoslim.operators import OPERATORS, BuildContext
from autoslim.recipe import Recipe

logger = logging.getLogger(__name__)

STAGES = tuple(op.name for op in OPERATORS)


@dataclass
class BuildResult:
    """The compressed model, seconds per stage, and JSON-able facts about what changed."""

    model: Any
    stage_seconds: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)


def validate(recipe: Recipe, config: Any, device: str = "cpu") -> None:
    """Raise ConfigError / UnsupportedError for a recipe this model or machine cannot build,
    or its runtime cannot convert."""
    from autoslim.runtimes import get_runtime

    family_of(config)
    for op in OPERATORS:
        if op.active(recipe):
            op.validate(recipe, config, device)
    get_runtime(recipe.runtime).validate(recipe, config, device)


def needs_calibration(recipe: Recipe) -> bool:
    """Whether a stage of ``recipe`` scores channels, heads or layers on activations, or
    heals the cuts on the calibration batch."""
    scored = recipe.prune_ratio or recipe.drop_heads_per_layer
    by_activations = scored and recipe.prune_importance != "magnitude"
    return bool(recipe.drop_layers or by_activations or recipe.recovery != "none")


def final_before_distillation(recipe: Recipe) -> bool:
    """Whether the model ``check`` sees (the fp32 working copy after the cheap stages) holds
    the memory of the built one: distillation changes only values, so it does unless the
    recipe casts to another precision, quantizes or runs in another runtime."""
    return bool(recipe.precision == "fp32" and recipe.bits == 16 and recipe.runtime == "torch")


def build(
    base: LoadedModel,
    recipe: Recipe,
    *,
    corpus: Corpus,
    seed: int = 0,
    teacher_cache: TeacherCache | None = None,
    calibration: torch.Tensor | None = None,
    check: Callable[[str, Any], None] | None = None,
    device: str | None = None,
) -> BuildResult:
    """Build ``recipe`` from ``base`` (left unmodified).

    ``check(stages, model)`` runs after the cheap stages (those that only cut), before
    distillation, and may raise to abandon the recipe; ``stages`` names the ones applied
    ("" when none was). The model it sees is the built one's shape in fp32: the later stages
    change its values, its dtype (:func:`final_before_distillation`) or its storage.
    ``teacher_cache`` (built from ``base.model`` on the KD split) and ``calibration`` (token
    windows of the KD split) let trials share them; without them private ones are made.
    """
    device = device or str(next(base.model.parameters()).device)
    validate(recipe, base.model.config, device)
    family = family_of(base.model.config)
    torch.manual_seed(seed)
    model: Any = copy.deepcopy(base.model).to(device=device, dtype=torch.float32)
    model.eval()
    if calibration is None and needs_calibration(recipe):
        from autoslim.compress.calibration import calibration_batch, context_window

        window = context_window(base.model.config)
        calibration = calibration_batch(base.tokenizer, corpus, window=window, seed=seed)
    ctx = BuildContext(
        model=model,
        recipe=recipe,
        family=family,
        device=device,
        base=base,
        corpus=corpus,
        teacher_cache=teacher_cache,
        calibration=calibration,
        info={
            "recipe": recipe.to_params(),
            "family": family.name,
            "seed": seed,
            "parameters_before": parameter_count(base.model),
        },
    )
    stage_seconds = dict.fromkeys(STAGES, 0.0)
    cheap = [op for op in OPERATORS if op.cheap]
    for op in OPERATORS:
        started = time.perf_counter()
        if op.active(recipe):
            progress.report(op.name)
            op.apply(ctx)
        stage_seconds[op.name] = time.perf_counter() - started
        if op is cheap[-1]:
            ctx.info["parameters_after"] = parameter_count(ctx.model)
            applied = [c.name for c in cheap if c.active(recipe)]
            if check is not None:
                check(", ".join(applied), ctx.model)
    ctx.info["stage_seconds"] = dict(stage_seconds)
    return BuildResult(model=ctx.model, stage_seconds=stage_seconds, info=ctx.info)
