"""drop_heads: remove attention query heads, GQA-aware, so the export reloads in transformers.

Stock configs carry one ``num_attention_heads`` / ``num_key_value_heads`` for every layer, and
every key-value group must serve the same number of query heads. A head-drop list that differs
between layers or groups is therefore applied in two parts:

* **physically removed**: the largest drop that every layer and every group shares (whole
  key-value groups first, then the same number of query heads from each remaining group); the
  projections shrink and the config is updated;
* **masked**: the remaining requested heads keep their shape, but the ``o_proj`` columns that
  read them are zero (and stay zero through distillation), which removes their contribution
  exactly.

So the model always computes exactly what the recipe asked for, saves with a stock config, and
shrinks as far as a stock config can express. ``drop_heads_per_layer=N`` drops the N least
important heads of each layer evenly, so it is always fully physical. Importance is one of
the width operator's ``IMPORTANCES``: ``magnitude`` (``|W_q[h]| * |W_o[:, h]|``, no data),
``activation`` (Minitron: the mean L2 norm of the head's output, the input of ``o_proj``, per
calibration token), ``wanda`` (``|W_o| * ||x||`` summed over the head's ``o_proj`` columns,
``||x||`` the root mean square of each column's input on the calibration batch) or
``fluctuation`` (FLAP: ``var(x) * ||W_o[:, c]||²`` summed over the head's columns).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autoslim.compress.calibration import input_sums, require_calibration
from autoslim.compress.families import Family, get_path, layers
from autoslim.compress.prune import activation_norms, column_weights
from autoslim.errors import ConfigError, UnsupportedError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeadShape:
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int

    @classmethod
    def of(cls, config: Any) -> HeadShape:
        heads = int(config.num_attention_heads)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(
            layers=int(config.num_hidden_layers),
            heads=heads,
            kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
            head_dim=int(head_dim),
            hidden=int(config.hidden_size),
        )

    @property
    def group(self) -> int:
        """Query heads per key-value head."""
        return self.heads // self.kv_heads


@dataclass(frozen=True)
class HeadPlan:
    """Per layer: key-value groups removed, query heads removed, query heads masked.

    Head indices are those of the original model.
    """

    remove_groups: tuple[tuple[int, ...], ...]
    remove_heads: tuple[tuple[int, ...], ...]
    mask_heads: tuple[tuple[int, ...], ...]
    shape: HeadShape

    @property
    def heads(self) -> int:
        """Query heads per layer after the physical removal."""
        return self.shape.heads - len(self.remove_heads[0]) if self.remove_heads else 0

    @property
    def kv_heads(self) -> int:
        return self.shape.kv_heads - len(self.remove_groups[0]) if self.remove_groups else 0

    def info(self) -> dict[str, Any]:
        return {
            "heads_before": self.shape.heads,
            "kv_heads_before": self.shape.kv_heads,
            "heads": self.heads,
            "kv_heads": self.kv_heads,
            "heads_kept_per_layer": [self.heads - len(masked) for masked in self.mask_heads],
            "masked_heads": tuple(
                (layer, h) for layer, hs in enumerate(self.mask_heads) for h in hs
            ),
        }


def requested_drops(
    recipe: Any, shape: HeadShape, kept_layers: list[int] | None = None
) -> list[set[int]]:
    """The explicit ``drop_heads`` of a recipe per layer, checked against the model's shape.

    Layers in ``drop_heads`` are the base model's; ``kept_layers`` (the base index of each
    current layer, after whole layers were dropped) maps them onto the current model, and a
    drop on a removed layer is gone with its layer.
    """
    from autoslim.compress.depth import remap_heads

    pairs = (
        recipe.drop_heads if kept_layers is None else remap_heads(recipe.drop_heads, kept_layers)
    )
    per_layer: list[set[int]] = [set() for _ in range(shape.layers)]
    for layer, head in pairs:
        if layer >= shape.layers or head >= shape.heads:
            raise ConfigError(
                f"drop_heads entry {layer}:{head} does not exist: the model has layers "
                f"0..{shape.layers - 1} and heads 0..{shape.heads - 1} per layer"
            )
        per_layer[layer].add(head)
    for layer, heads in enumerate(per_layer):
        if len(heads) == shape.heads:
            raise ConfigError(
                f"drop_heads removes all {shape.heads} heads of layer {layer}; keep at least one"
            )
    return per_layer


def check_per_layer(count: int, shape: HeadShape) -> None:
    """``drop_heads_per_layer`` must leave heads and keep key-value groups even."""
    if count >= shape.heads:
        raise ConfigError(
            f"drop_heads_per_layer={count} removes every head: the model has {shape.heads} "
            f"query heads per layer; use 0..{shape.heads - 1}"
        )
    if shape.group > 1 and count % shape.kv_heads and count % shape.group:
        allowed = sorted(
            {n for n in range(1, shape.heads) if n % shape.kv_heads == 0 or n % shape.group == 0}
        )
        raise ConfigError(
            f"drop_heads_per_layer={count} cannot keep the {shape.kv_heads} key-value groups "
            f"even ({shape.group} query heads each): use one of {allowed}"
        )


def plan(drops: list[set[int]], shape: HeadShape) -> HeadPlan:
    """Split per-layer drops into what a stock config can remove and what must be masked."""
    g = shape.group
    by_group = [
        [sorted(h for h in heads if h // g == k) for k in range(shape.kv_heads)] for heads in drops
    ]
    full = [[k for k, hs in enumerate(groups) if len(hs) == g] for groups in by_group]
    n_groups = min(len(f) for f in full)
    remove_groups = [tuple(f[:n_groups]) for f in full]
    remaining = [
        [hs for k, hs in enumerate(groups) if k not in removed]
        for groups, removed in zip(by_group, remove_groups, strict=True)
    ]
    per_group = min((len(hs) for groups in remaining for hs in groups), default=0)
    remove_heads: list[tuple[int, ...]] = []
    mask_heads: list[tuple[int, ...]] = []
    for layer, groups in enumerate(remaining):
        gone = [h for k in remove_groups[layer] for h in range(k * g, (k + 1) * g)]
        gone += [h for hs in groups for h in hs[:per_group]]
        remove_heads.append(tuple(sorted(gone)))
        mask_heads.append(tuple(sorted(drops[layer] - set(gone))))
    return HeadPlan(tuple(remove_groups), tuple(remove_heads), tuple(mask_heads), shape)


def physical_heads(recipe: Any, shape: HeadShape) -> tuple[int, int]:
    """(query heads, key-value heads) per layer once ``recipe``'s heads are dropped."""
    if recipe.drop_heads:
        head_plan = plan(requested_drops(recipe, shape), shape)
        return head_plan.heads, head_plan.kv_heads
    count = recipe.drop_heads_per_layer
    if shape.group == 1:
        return shape.heads - count, shape.kv_heads - count
    if count % shape.kv_heads == 0:
        return shape.heads - count, shape.kv_heads
    return shape.heads - count, shape.kv_heads - count // shape.group


def head_scores(
    model: Any,
    family: Family,
    importance: str = "magnitude",
    calibration: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Per layer, the importance of each query head (higher is more important)."""
    shape = HeadShape.of(model.config)
    d = shape.head_dim
    attentions = [get_path(block, str(family.attention)) for block in layers(model, family)]
    if importance == "magnitude":
        scores = []
        for attn in attentions:
            q = attn.q_proj.weight.detach().float().view(shape.heads, d, -1)
            o = attn.o_proj.weight.detach().float().view(-1, shape.heads, d)
            scores.append(q.norm(dim=(1, 2)) * o.norm(dim=(0, 2)))
        return scores
    calibration = require_calibration(
        f"prune_importance={importance!r}", calibration, ", or use 'magnitude'"
    )
    outs = {str(i): attn.o_proj for i, attn in enumerate(attentions)}
    if importance == "activation":
        norms = input_sums(
            model, outs, calibration, lambda x: x.view(len(x), shape.heads, d).norm(dim=-1)
        )
        return [norms[str(i)] for i in range(len(attentions))]
    stats = activation_norms(model, outs, importance, calibration)
    scores = []
    for i, attn in enumerate(attentions):
        column = column_weights(attn.o_proj.weight, importance) * stats[str(i)]
        scores.append(column.view(shape.heads, d).sum(dim=1))
    return scores


def least_important(
    model: Any,
    family: Family,
    per_layer: int,
    *,
    importance: str = "magnitude",
    calibration: torch.Tensor | None = None,
) -> list[set[int]]:
    """The ``per_layer`` heads to drop in every layer, lowest ``importance`` first, kept even
    across key-value groups (whole groups when ``per_layer`` is a multiple of the group size
    but not of the group count)."""
    shape = HeadShape.of(model.config)
    g = shape.group
    drops: list[set[int]] = []
    for score in head_scores(model, family, importance, calibration):
        if g == 1 or per_layer % shape.kv_heads == 0:
            chosen: list[int] = []
            per_group = per_layer // shape.kv_heads if g > 1 else per_layer
            for k in range(shape.kv_heads if g > 1 else 1):
                members = range(k * g, (k + 1) * g) if g > 1 else range(shape.heads)
                ranked = sorted(members, key=lambda h: (float(score[h]), h))
                chosen += ranked[:per_group]
            drops.append(set(chosen))
        else:
            group_score = score.view(shape.kv_heads, g).sum(dim=1)
            ranked = sorted(range(shape.kv_heads), key=lambda k: (float(group_score[k]), k))
            drops.append({h for k in ranked[: per_layer // g] for h in range(k * g, (k + 1) * g)})
    return drops


def check_reloadable(family: Family, config: Any, heads: int) -> None:
    """Llama's config refuses ``hidden_size % num_attention_heads != 0`` when it reloads."""
    if family.name == "llama" and config.hidden_size % heads:
        raise UnsupportedError(
            f"dropping heads leaves {heads} query heads per layer, which does not divide "
            f"hidden_size={config.hidden_size}; Llama's config refuses that on reload: drop a "
            "number of heads that leaves a divisor of hidden_size"
        )


def _keep_rows(linear: nn.Linear, rows: torch.Tensor) -> nn.Linear:
    new = nn.Linear(
        linear.in_features,
        len(rows),
        bias=linear.bias is not None,
        device=linear.weight.device,
        dtype=linear.weight.dtype,
    )
    with torch.no_grad():
        new.weight.copy_(linear.weight[rows])
        if linear.bias is not None:
            new.bias.copy_(linear.bias[rows])
    return new


def _keep_columns(linear: nn.Linear, columns: torch.Tensor) -> nn.Linear:
    new = nn.Linear(
        len(columns),
        linear.out_features,
        bias=linear.bias is not None,
        device=linear.weight.device,
        dtype=linear.weight.dtype,
    )
    with torch.no_grad():
        new.weight.copy_(linear.weight[:, columns])
        if linear.bias is not None:
            new.bias.copy_(linear.bias)
    return new


def _channels(heads: list[int], head_dim: int) -> torch.Tensor:
    return torch.tensor([h * head_dim + i for h in heads for i in range(head_dim)])


def drop_heads(model: Any, family: Family, head_plan: HeadPlan) -> dict[str, torch.Tensor]:
    """Apply ``head_plan`` in place; returns the zero masks of ``o_proj`` weights by name.

    A mask is True where a weight must stay zero (a masked head's ``o_proj`` columns).
    """
    config: Any = model.config
    shape = head_plan.shape
    d, g = shape.head_dim, shape.group
    masks: dict[str, torch.Tensor] = {}
    for index, block in enumerate(layers(model, family)):
        path = str(family.attention)
        attn = get_path(block, path)
        removed = set(head_plan.remove_heads[index])
        kept_heads = [h for h in range(shape.heads) if h not in removed]
        kept_groups = [k for k in range(shape.kv_heads) if k not in head_plan.remove_groups[index]]
        if removed:
            q_rows = _channels(kept_heads, d)
            kv_rows = _channels(kept_groups, d)
            attn.q_proj = _keep_rows(attn.q_proj, q_rows)
            attn.k_proj = _keep_rows(attn.k_proj, kv_rows)
            attn.v_proj = _keep_rows(attn.v_proj, kv_rows)
            attn.o_proj = _keep_columns(attn.o_proj, q_rows)
            attn.num_key_value_groups = len(kept_heads) // len(kept_groups)
        masked = [kept_heads.index(h) for h in head_plan.mask_heads[index]]
        if masked:
            mask = torch.zeros_like(attn.o_proj.weight, dtype=torch.bool)
            mask[:, _channels(masked, d)] = True
            with torch.no_grad():
                attn.o_proj.weight.masked_fill_(mask, 0.0)
            masks[f"{family.layers_path}.{index}.{path}.o_proj.weight"] = mask
    config.num_attention_heads = head_plan.heads
    if hasattr(config, "num_key_value_heads"):
        config.num_key_value_heads = head_plan.kv_heads
    config.head_dim = d
    logger.info(
        "heads %d -> %d (kv %d -> %d) per layer, %d masked, group size %d",
        shape.heads,
        head_plan.heads,
        shape.kv_heads,
        head_plan.kv_heads,
        sum(len(m) for m in head_plan.mask_heads),
        g,
    )
    return masks
