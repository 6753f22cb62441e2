"""precision: the dtype a model is distilled, measured and saved in (fp32, bf16, fp16).

Also the compute dtype of the layers a quantizer leaves unquantized. Offered only where the
device computes it natively (:mod:`autoslim.precisions`); elsewhere refused with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autoslim.errors import UnsupportedError
from autoslim.knobs import Knob
from autoslim.operators.base import BuildContext, Operator
from autoslim.precisions import PRECISIONS, supported, torch_dtype, why_not


def _computes(chosen: Mapping[str, Any]) -> bool:
    """llama.cpp is given float32 weights and computes in its own types (gguf_type), so a
    torch precision would only add a rounding before its own."""
    return bool(chosen.get("runtime", "torch") != "llamacpp")


def _search(device: str) -> list[str]:
    return supported(device)


class Precision(Operator):
    name = "precision"
    doc = "cast the model to the dtype it is measured and saved in"
    knobs = (
        Knob(
            "precision",
            str,
            "fp32",
            "dtype the model is distilled, measured and saved in, and in which a quantized "
            "model's other layers compute",
            choices=PRECISIONS,
            search=_search,
            active=_computes,
        ),
    )

    def active(self, recipe: Any) -> bool:
        return bool(recipe.runtime != "llamacpp")

    def validate(self, recipe: Any, config: Any, device: str) -> None:
        reason = why_not(recipe.precision, device)
        if reason:
            allowed = ", ".join(supported(device))
            raise UnsupportedError(
                f"precision={recipe.precision!r} on {device}: {reason}; choose one of {allowed}"
            )

    def apply(self, ctx: BuildContext) -> None:
        ctx.model.to(torch_dtype(ctx.recipe.precision))
        ctx.info["precision"] = ctx.recipe.precision

    def describe(self, recipe: Any) -> str:
        return "" if recipe.precision == "fp32" else str(recipe.precision)


OPERATOR = Precision()
