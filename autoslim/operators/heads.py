"""drop_heads: remove attention query heads (explicit ``LAYER:HEAD`` pairs or N per layer).

The rules a head drop must follow (heads that exist, at least one left per layer, key-value
groups kept even, a count Llama's config reloads) live in one function,
:func:`check_drops`, called by study-file validation and by ``build`` alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autoslim.errors import ConfigError
from autoslim.knobs import Knob
from autoslim.operators.base import BuildContext, Operator

NOT_RELOADABLE = {
    "gpt2": "GPT-2 derives its head size from n_embd / n_head, so a model with dropped heads "
    "cannot reload under its config",
    "opt": "OPT derives its head size from hidden_size / num_attention_heads, so a model with "
    "dropped heads cannot reload under its config",
}


def parse_heads(text: str) -> tuple[tuple[int, int], ...]:
    """``"0:1,2:5"`` → ``((0, 1), (2, 5))``; the empty string is no heads."""
    pairs: list[tuple[int, int]] = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        layer, sep, head = item.partition(":")
        if not sep or not layer.strip().isdigit() or not head.strip().isdigit():
            raise ConfigError(
                f"drop_heads entry {item!r}: write LAYER:HEAD pairs separated by commas, "
                "e.g. 0:1,2:5"
            )
        pairs.append((int(layer), int(head)))
    if len(set(pairs)) != len(pairs):
        raise ConfigError(f"drop_heads {text!r} repeats a head")
    return tuple(sorted(pairs))


def format_heads(pairs: tuple[tuple[int, int], ...]) -> str:
    return ",".join(f"{layer}:{head}" for layer, head in pairs)


def _decode(value: Any) -> tuple[tuple[int, int], ...]:
    if isinstance(value, str):
        return parse_heads(value)
    pairs = tuple(tuple(p) for p in value)
    for pair in pairs:
        if len(pair) != 2 or any(not isinstance(x, int) or x < 0 for x in pair):
            raise ConfigError(
                f"drop_heads entry {pair!r}: must be (layer, head) with non-negative ints"
            )
    return parse_heads(format_heads(pairs))  # type: ignore[arg-type]


def check_drops(recipe: Any, config: Any, family: str) -> tuple[int, int]:
    """Raise for a head drop this model cannot take; return the physical (query, kv) heads
    per layer that remain. The one copy of every head-drop rule."""
    from autoslim.compress import heads
    from autoslim.compress.families import family_of

    if family in NOT_RELOADABLE:
        OPERATOR.require_family(family)
    shape = heads.HeadShape.of(config)
    if recipe.drop_heads_per_layer:
        heads.check_per_layer(recipe.drop_heads_per_layer, shape)
    kept = heads.physical_heads(recipe, shape)
    heads.check_reloadable(family_of(config), config, kept[0])
    return kept


def _no_explicit_heads(chosen: Mapping[str, Any]) -> bool:
    return not chosen.get("drop_heads")


class DropHeads(Operator):
    name = "drop_heads"
    doc = "remove attention query heads, GQA-aware; what a stock config cannot express is masked"
    knobs = (
        Knob(
            "drop_heads",
            tuple,
            (),
            "explicit heads to remove, as LAYER:HEAD pairs of the base model",
            encode=format_heads,
            decode=_decode,
            search=[""],
            metavar="LAYER:HEAD,...",
            allowed_doc='LAYER:HEAD pairs, e.g. "0:1,2:5"',
        ),
        Knob(
            "drop_heads_per_layer",
            int,
            0,
            "remove the N least important query heads of every layer",
            minimum=0,
            search=[0],
            active=_no_explicit_heads,
            metavar="N",
            extreme=True,
        ),
    )
    unsupported = NOT_RELOADABLE
    cheap = True

    def active(self, recipe: Any) -> bool:
        return bool(recipe.drop_heads or recipe.drop_heads_per_layer)

    def validate(self, recipe: Any, config: Any, device: str) -> None:
        check_drops(recipe, config, str(config.model_type))

    def apply(self, ctx: BuildContext) -> None:
        from autoslim.compress import heads

        recipe, model = ctx.recipe, ctx.model
        shape = heads.HeadShape.of(model.config)
        if recipe.drop_heads:
            drops = heads.requested_drops(recipe, shape, kept_layers=ctx.kept_layers)
        else:
            drops = heads.least_important(
                model,
                ctx.family,
                recipe.drop_heads_per_layer,
                importance=recipe.prune_importance,
                calibration=ctx.calibration,
            )
        head_plan = heads.plan(drops, shape)
        ctx.keep_zero |= heads.drop_heads(model, ctx.family, head_plan)
        ctx.removed_heads = [
            sorted({*gone, *masked})
            for gone, masked in zip(head_plan.remove_heads, head_plan.mask_heads, strict=True)
        ]
        info = head_plan.info()
        ctx.info |= info | {"masked_heads": format_heads(info["masked_heads"])}

    def describe(self, recipe: Any) -> str:
        if recipe.drop_heads:
            return f"drop heads {format_heads(recipe.drop_heads)}"
        if recipe.drop_heads_per_layer:
            return f"drop {recipe.drop_heads_per_layer} heads/layer"
        return ""

    def check_recipe(self, recipe: Any) -> None:
        if recipe.drop_heads and recipe.drop_heads_per_layer:
            raise ConfigError(
                "drop_heads and drop_heads_per_layer are both set; give explicit heads or a "
                "per-layer count, not both"
            )


OPERATOR = DropHeads()
