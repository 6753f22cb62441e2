"""validate and build: one compressed model from one Recipe.

Order: structured_prune → drop_heads → distill → quantize. The base model is never modified: the
cheap stages work on a deep copy, distillation trains that copy against the base model's cached
outputs, and quantization reloads it through a quantization backend.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from autoslim import data
from autoslim.compress import heads as heads_mod
from autoslim.compress.backends import QuantBackend, QuantSpec, get_backend
from autoslim.compress.distill import TeacherCache, check_temperature, distill
from autoslim.compress.families import Family, family_of, intermediate_size, require
from autoslim.compress.prune import pruned_width, structured_prune
from autoslim.data import Corpus
from autoslim.errors import UnsupportedError
from autoslim.models import LoadedModel, parameter_count
from autoslim.recipe import Recipe

logger = logging.getLogger(__name__)

STAGES = ("structured_prune", "drop_heads", "distill", "quantize")


@dataclass
class BuildResult:
    """The compressed model, seconds per stage, and JSON-able facts about what changed."""

    model: Any
    stage_seconds: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)


def _final_shapes(
    config: Any, family: Family, recipe: Recipe, heads: tuple[int, int]
) -> dict[str, tuple[int, int]]:
    """(in, out) features of every linear layer the quantizer will see, after the cheap
    stages; head counts are the physical ones."""
    width = pruned_width(intermediate_size(config, family), recipe.prune_ratio)
    hidden = int(getattr(config, "hidden_size", None) or config.n_embd)
    shapes = {"MLP input projection": (hidden, width), "MLP output projection": (width, hidden)}
    if family.attention is not None:
        head_dim = heads_mod.HeadShape.of(config).head_dim
        q, kv = heads[0] * head_dim, heads[1] * head_dim
        shapes |= {"q_proj": (hidden, q), "k_proj/v_proj": (hidden, kv), "o_proj": (q, hidden)}
    return shapes


def _quantization(recipe: Recipe, device: str) -> tuple[QuantBackend, QuantSpec, torch.dtype]:
    """Today's Recipe bits/quant_type/double_quant as a bitsandbytes QuantSpec, and the compute
    dtype of the unquantized layers (fp32 on CPU, bf16 on CUDA)."""
    spec = QuantSpec(recipe.bits, recipe.quant_type, recipe.double_quant)
    dtype = torch.float32 if torch.device(device).type == "cpu" else torch.bfloat16
    return get_backend("bitsandbytes"), spec, dtype


def validate(recipe: Recipe, config: Any, device: str = "cpu") -> None:
    """Raise ConfigError / UnsupportedError for a recipe this model or machine cannot build."""
    family = family_of(config)
    if recipe.prune_ratio:
        require(family, "structured_prune")
    wants_heads = bool(recipe.drop_heads or recipe.drop_heads_per_layer)
    heads = (0, 0)
    if family.attention is not None:
        shape = heads_mod.HeadShape.of(config)
        heads = (shape.heads, shape.kv_heads)
    if wants_heads:
        require(family, "drop_heads")
        if recipe.drop_heads_per_layer:
            heads_mod.check_per_layer(recipe.drop_heads_per_layer, shape)
        heads = heads_mod.physical_heads(recipe, shape)
        heads_mod.check_reloadable(family, config, heads[0])
    if recipe.kd_steps:
        require(family, "distill")
        check_temperature(recipe.kd_temperature)
    if recipe.bits != 16:
        require(family, "quantize")
        backend, spec, dtype = _quantization(recipe, device)
        why = backend.supports_family(family.name)
        if why is not None:
            raise UnsupportedError(f"quant_backend={backend.name!r} for {family.name}: {why}")
        backend.check(spec, device, _final_shapes(config, family, recipe, heads), dtype)


def _timed(stage_seconds: dict[str, float], stage: str, started: float) -> None:
    stage_seconds[stage] = time.perf_counter() - started


def build(
    base: LoadedModel,
    recipe: Recipe,
    *,
    corpus: Corpus,
    seed: int = 0,
    teacher_cache: TeacherCache | None = None,
    check: Callable[[str, Any], None] | None = None,
    device: str | None = None,
) -> BuildResult:
    """Build ``recipe`` from ``base`` (left unmodified).

    ``check(stage, model)`` runs after the cheap stages, before distillation, and may raise to
    abandon the recipe. ``teacher_cache`` (built from ``base.model`` on the KD split) lets
    trials share teacher outputs; without one a private cache is made.
    """
    device = device or str(next(base.model.parameters()).device)
    validate(recipe, base.model.config, device)
    family = family_of(base.model.config)
    torch.manual_seed(seed)
    model: Any = copy.deepcopy(base.model).to(device)
    model.eval()
    stage_seconds = dict.fromkeys(STAGES, 0.0)
    info: dict[str, Any] = {
        "recipe": recipe.to_params(),
        "family": family.name,
        "seed": seed,
        "parameters_before": parameter_count(base.model),
    }

    started = time.perf_counter()
    if recipe.prune_ratio:
        info |= structured_prune(model, family, recipe.prune_ratio)
    _timed(stage_seconds, "structured_prune", started)

    started = time.perf_counter()
    keep_zero: dict[str, torch.Tensor] = {}
    if recipe.drop_heads or recipe.drop_heads_per_layer:
        shape = heads_mod.HeadShape.of(model.config)
        drops = (
            heads_mod.requested_drops(recipe, shape)
            if recipe.drop_heads
            else heads_mod.least_important(model, family, recipe.drop_heads_per_layer)
        )
        head_plan = heads_mod.plan(drops, shape)
        keep_zero = heads_mod.drop_heads(model, family, head_plan)
        info |= head_plan.info()
    _timed(stage_seconds, "drop_heads", started)
    info["parameters_after"] = parameter_count(model)

    if check is not None:
        check("drop_heads", model)

    started = time.perf_counter()
    if recipe.kd_steps:
        if teacher_cache is None:
            ids = data.tokens(base.tokenizer, corpus, "kd")
            window = min(256, int(getattr(base.model.config, "max_position_embeddings", 256)))
            teacher_cache = TeacherCache(base.model, ids, window=window)
        info |= distill(
            model,
            teacher_cache,
            steps=recipe.kd_steps,
            temperature=recipe.kd_temperature,
            alpha=recipe.kd_alpha,
            lr=recipe.kd_lr,
            keep_zero=keep_zero,
        )
    _timed(stage_seconds, "distill", started)

    started = time.perf_counter()
    if recipe.bits != 16:
        backend, spec, dtype = _quantization(recipe, device)
        model = backend.quantize(model, spec, device, dtype)
        info["quantization"] = recipe.describe().rsplit(", ", 1)[-1]
    _timed(stage_seconds, "quantize", started)
    info["stage_seconds"] = dict(stage_seconds)
    return BuildResult(model=model, stage_seconds=stage_seconds, info=info)
