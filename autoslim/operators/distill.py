"""distill: knowledge distillation from the base model on the KD split (cached teacher)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autoslim.compress.temperatures import TEMPERATURES
from autoslim.knobs import Knob
from autoslim.operators.base import BuildContext, Operator

# kd_optimizer values: torch.optim.AdamW, bitsandbytes.optim.AdamW8bit.
OPTIMIZERS = ("adamw", "adamw8bit")


def _distilling(chosen: Mapping[str, Any]) -> bool:
    return int(chosen.get("kd_steps", 0)) > 0


class Distill(Operator):
    name = "distill"
    doc = "alpha·T²·KL(teacher‖student) + (1−alpha)·CE on the KD split, teacher outputs cached"
    knobs = (
        Knob(
            "kd_steps",
            int,
            0,
            "distillation steps (0 = no distillation)",
            minimum=0,
            search=[0, 50],
            metavar="N",
            extreme=True,
        ),
        Knob(
            "kd_temperature",
            float,
            2.0,
            "distillation temperature",
            minimum=TEMPERATURES[0],
            maximum=TEMPERATURES[-1],
            search={"low": 1.0, "high": 4.0},
            active=_distilling,
        ),
        Knob(
            "kd_alpha",
            float,
            0.5,
            "weight of the KD loss against cross-entropy",
            minimum=0.0,
            maximum=1.0,
            search=[0.5],
            active=_distilling,
        ),
        Knob(
            "kd_lr",
            float,
            1e-4,
            "distillation learning rate (AdamW)",
            minimum=1e-8,
            maximum=1.0,
            search=[1e-4],
            active=_distilling,
        ),
        Knob(
            "kd_optimizer",
            str,
            "adamw",
            "distillation optimizer: torch AdamW (fp32 state), or bitsandbytes AdamW8bit "
            "(8-bit state: 2 bytes per parameter instead of 8)",
            choices=OPTIMIZERS,
            search=["adamw"],
            active=_distilling,
        ),
        Knob(
            "kd_checkpointing",
            bool,
            False,
            "gradient checkpointing while distilling: recompute activations in the backward "
            "pass instead of keeping them (less memory, more time per step)",
            search=[False],
            active=_distilling,
        ),
    )

    def active(self, recipe: Any) -> bool:
        return bool(recipe.kd_steps)

    def apply(self, ctx: BuildContext) -> None:
        from autoslim import data
        from autoslim.compress.calibration import context_window
        from autoslim.compress.distill import TeacherCache, distill
        from autoslim.precisions import torch_dtype

        cache = ctx.teacher_cache
        if cache is None:
            base = ctx.base
            ids = data.tokens(base.tokenizer, ctx.corpus, "kd")
            cache = TeacherCache(base.model, ids, window=context_window(base.model.config))
        recipe = ctx.recipe
        ctx.info |= distill(
            ctx.model,
            cache,
            steps=recipe.kd_steps,
            temperature=recipe.kd_temperature,
            alpha=recipe.kd_alpha,
            lr=recipe.kd_lr,
            keep_zero=ctx.keep_zero,
            autocast=torch_dtype(recipe.precision),
            optimizer=recipe.kd_optimizer,
            checkpointing=recipe.kd_checkpointing,
        )

    def describe(self, recipe: Any) -> str:
        return f"KD {recipe.kd_steps} steps T={recipe.kd_temperature:g}" if recipe.kd_steps else ""


OPERATOR = Distill()
