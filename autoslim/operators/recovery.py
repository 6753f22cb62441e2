"""recovery: heal the structural cuts on the calibration batch, before distillation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autoslim.knobs import Knob
from autoslim.operators.base import BuildContext, Operator

METHODS = ("none", "bias", "block_kd", "bias+block_kd")
# The method the bundled studies and the README recommend (it heals every cut in every family).
DEFAULT_METHOD = "block_kd"


def _cut(chosen: Mapping[str, Any]) -> bool:
    return any(
        chosen.get(name)
        for name in ("drop_layers", "drop_heads", "drop_heads_per_layer", "prune_ratio")
    )


def _block_kd(chosen: Mapping[str, Any]) -> bool:
    return "block_kd" in str(chosen.get("recovery"))


class Recovery(Operator):
    name = "recovery"
    doc = (
        "heal the cuts on the calibration batch, layer by layer on the healed stream: "
        "compensation biases (FLAP) or block-local distillation"
    )
    knobs = (
        Knob(
            "recovery",
            str,
            "none",
            "how the structural cuts are healed before distillation: none; bias (the removed "
            "channels', heads' and layers' mean output as a bias, training-free); block_kd "
            "(each cut block trained to reproduce the base model's hidden states); "
            "bias+block_kd (both, in that order)",
            choices=METHODS,
            search=["none"],
            active=_cut,
        ),
        Knob(
            "recovery_steps",
            int,
            512,
            "block_kd: Adam steps in all, each on 4 calibration windows, shared equally by "
            "the healed blocks (every block for a width or head cut, the one before each gap "
            "for a layer drop)",
            minimum=1,
            search=[512],
            active=_block_kd,
            metavar="N",
            extreme=True,
        ),
        Knob(
            "recovery_lr",
            float,
            1e-3,
            "block_kd: learning rate (Adam)",
            minimum=1e-8,
            maximum=1.0,
            search=[1e-3],
            active=_block_kd,
        ),
    )

    def active(self, recipe: Any) -> bool:
        return bool(recipe.recovery != "none")

    def validate(self, recipe: Any, config: Any, device: str) -> None:
        from autoslim.compress.recovery import check

        self.require_family(str(config.model_type))
        check(recipe, config)

    def apply(self, ctx: BuildContext) -> None:
        from autoslim.compress.calibration import require_calibration
        from autoslim.compress.recovery import Cuts, recover
        from autoslim.precisions import torch_dtype

        recipe = ctx.recipe
        calibration = require_calibration(f"recovery={recipe.recovery!r}", ctx.calibration)
        cuts = Cuts.of(
            int(ctx.base.model.config.num_hidden_layers),
            ctx.kept_layers,
            ctx.removed_channels,
            ctx.removed_heads,
        )
        ctx.info |= recover(
            ctx.model,
            ctx.base.model,
            ctx.family,
            cuts,
            calibration,
            method=recipe.recovery,
            steps=recipe.recovery_steps,
            lr=recipe.recovery_lr,
            keep_zero=ctx.keep_zero,
            autocast=torch_dtype(recipe.precision),
        )

    def describe(self, recipe: Any) -> str:
        parts = {
            "bias": "bias compensation",
            "block_kd": f"block KD {recipe.recovery_steps} steps",
        }
        if recipe.recovery == "none":
            return ""
        return " + ".join(parts[part] for part in recipe.recovery.split("+"))


OPERATOR = Recovery()
