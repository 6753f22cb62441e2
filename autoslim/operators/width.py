"""structured_prune: remove MLP intermediate channels with torch-pruning's dependency graph."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autoslim.knobs import Knob
from autoslim.operators.base import BuildContext, Operator

IMPORTANCES = ("magnitude", "activation", "wanda", "fluctuation")


def _scores_something(chosen: Mapping[str, Any]) -> bool:
    return bool(chosen.get("prune_ratio") or chosen.get("drop_heads_per_layer"))


class StructuredPrune(Operator):
    name = "structured_prune"
    doc = "remove the same share of MLP channels in every layer, rounded to multiples of 64"
    knobs = (
        Knob(
            "prune_ratio",
            float,
            0.0,
            "fraction of MLP channels to remove (0 = none)",
            minimum=0.0,
            maximum=1.0,
            maximum_exclusive=True,
            search={"low": 0.0, "high": 0.5, "step": 0.1},
            extreme=True,
        ),
        Knob(
            "prune_importance",
            str,
            "magnitude",
            "how channels and heads are ranked: weight magnitude, or activations on a "
            "calibration sample of the KD split (mean |x|, Wanda's |W|·‖x‖, or FLAP's "
            "fluctuation var(x)·‖W‖², the one a recovery bias compensates best)",
            choices=IMPORTANCES,
            search=["activation"],
            active=_scores_something,
        ),
    )
    cheap = True

    def active(self, recipe: Any) -> bool:
        return bool(recipe.prune_ratio)

    def apply(self, ctx: BuildContext) -> None:
        from autoslim.compress.prune import structured_prune

        ctx.removed_channels = []
        ctx.info |= structured_prune(
            ctx.model,
            ctx.family,
            ctx.recipe.prune_ratio,
            importance=ctx.recipe.prune_importance,
            calibration=ctx.calibration,
            removed=ctx.removed_channels,
        )

    def describe(self, recipe: Any) -> str:
        if not recipe.prune_ratio:
            return ""
        how = "" if recipe.prune_importance == "magnitude" else f" by {recipe.prune_importance}"
        return f"prune {recipe.prune_ratio:.0%}{how}"


OPERATOR = StructuredPrune()
