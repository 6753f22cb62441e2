"""drop_layers: remove whole decoder layers, the least influential on a calibration sample."""

from __future__ import annotations

from typing import Any

from autoslim.knobs import Knob
from autoslim.operators.base import BuildContext, Operator


class DropLayers(Operator):
    name = "drop_layers"
    doc = (
        "remove whole decoder layers chosen by block influence (ShortGPT) on a calibration sample"
    )
    knobs = (
        Knob(
            "drop_layers",
            int,
            0,
            "number of whole decoder layers to remove (0 = none)",
            minimum=0,
            search=[0],
            metavar="N",
            extreme=True,
        ),
    )
    cheap = True

    def active(self, recipe: Any) -> bool:
        return bool(recipe.drop_layers)

    def validate(self, recipe: Any, config: Any, device: str) -> None:
        from autoslim.compress import depth
        from autoslim.compress.families import family_of

        self.require_family(str(config.model_type))
        depth.check(config, family_of(config), recipe.drop_layers)

    def apply(self, ctx: BuildContext) -> None:
        from autoslim.compress import depth

        info = depth.drop_layers(ctx.model, ctx.family, ctx.recipe.drop_layers, ctx.calibration)
        ctx.kept_layers = list(info["kept_layers"])
        ctx.info |= info

    def describe(self, recipe: Any) -> str:
        n = recipe.drop_layers
        return f"drop {n} layer{'s' if n > 1 else ''}" if n else ""


OPERATOR = DropLayers()
