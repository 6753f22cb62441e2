"""quantize: weight quantization through a backend (bitsandbytes, torchao), applied last.

``bits`` is the weight bits under every runtime; this operator quantizes them in the torch
runtime, another runtime when it converts the built model (``autoslim/runtimes/``).

The backends live in ``autoslim/compress/backends/`` behind one protocol (check → quantize
→ save → plain ``from_pretrained``); this operator only maps the recipe's knobs to a
``QuantSpec`` and asks the chosen backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autoslim.knobs import Knob
from autoslim.operators.base import BuildContext, Operator

BITS = (16, 8, 4)
# The names of autoslim.compress.backends.BACKENDS (which imports torch; a test keeps the two
# equal).
BACKENDS = ("bitsandbytes", "torchao")
QUANT_TYPES = ("nf4", "fp4")


def spec_of(recipe: Any) -> Any:
    from autoslim.compress.backends import QuantSpec

    return QuantSpec(
        bits=recipe.bits,
        quant_type=recipe.quant_type,
        double_quant=recipe.double_quant,
        activations=recipe.quant_activations,
    )


def final_shapes(recipe: Any, config: Any) -> dict[str, tuple[int, int]]:
    """(in, out) features of every linear layer the quantizer sees, after the cheap stages."""
    from autoslim.compress import heads
    from autoslim.compress.families import family_of, intermediate_size
    from autoslim.compress.prune import pruned_width
    from autoslim.operators.heads import check_drops

    family = family_of(config)
    width = pruned_width(intermediate_size(config, family), recipe.prune_ratio)
    hidden = int(getattr(config, "hidden_size", None) or config.n_embd)
    shapes = {"MLP input projection": (hidden, width), "MLP output projection": (width, hidden)}
    if family.attention is not None:
        head_dim = heads.HeadShape.of(config).head_dim
        kept = check_drops(recipe, config, family.name)
        q, kv = kept[0] * head_dim, kept[1] * head_dim
        shapes |= {"q_proj": (hidden, q), "k_proj/v_proj": (hidden, kv), "o_proj": (q, hidden)}
    return shapes


def _weight_bits(chosen: Mapping[str, Any]) -> bool:
    """bits is the weight format everywhere but llamacpp, whose own knob gguf_type is."""
    return bool(chosen.get("runtime", "torch") != "llamacpp")


def _quantizing(chosen: Mapping[str, Any]) -> bool:
    return int(chosen.get("bits", 16)) != 16 and chosen.get("runtime", "torch") == "torch"


def _bnb_4bit(chosen: Mapping[str, Any]) -> bool:
    return int(chosen.get("bits", 16)) == 4 and chosen.get("quant_backend") == "bitsandbytes"


def _torchao_8bit(chosen: Mapping[str, Any]) -> bool:
    return int(chosen.get("bits", 16)) == 8 and chosen.get("quant_backend") == "torchao"


class Quantize(Operator):
    name = "quantize"
    doc = "weight quantization by a backend, the last stage"
    knobs = (
        Knob(
            "bits",
            int,
            16,
            "weight bits (16 = no quantization; under llamacpp, gguf_type instead)",
            choices=BITS,
            search=[16, 8],
            active=_weight_bits,
        ),
        Knob(
            "quant_backend",
            str,
            "bitsandbytes",
            "the quantization library",
            choices=BACKENDS,
            search=["torchao"],
            active=_quantizing,
        ),
        Knob(
            "quant_type",
            str,
            "nf4",
            "bitsandbytes 4-bit data type",
            choices=QUANT_TYPES,
            search=["nf4"],
            active=_bnb_4bit,
        ),
        Knob(
            "double_quant",
            bool,
            True,
            "bitsandbytes 4-bit: quantize the scales too",
            search=[True],
            active=_bnb_4bit,
        ),
        Knob(
            "quant_activations",
            bool,
            False,
            "torchao 8-bit: also quantize activations dynamically (int8 x int8 matmuls)",
            search=[False],
            active=_torchao_8bit,
        ),
    )

    def active(self, recipe: Any) -> bool:
        """Quantizes in the torch runtime; another runtime quantizes ``bits`` its own way when it
        converts the built model."""
        return bool(recipe.bits != 16 and recipe.runtime == "torch")

    def validate(self, recipe: Any, config: Any, device: str) -> None:
        from autoslim.compress.backends import get_backend
        from autoslim.errors import UnsupportedError
        from autoslim.precisions import torch_dtype

        family = str(config.model_type)
        self.require_family(family)
        backend = get_backend(recipe.quant_backend)
        why = backend.supports_family(family)
        if why is not None:
            raise UnsupportedError(f"quant_backend={recipe.quant_backend!r} on {family}: {why}")
        shapes = final_shapes(recipe, config)
        backend.check(spec_of(recipe), device, shapes, torch_dtype(recipe.precision))

    def apply(self, ctx: BuildContext) -> None:
        from autoslim.compress.backends import get_backend
        from autoslim.precisions import torch_dtype

        recipe = ctx.recipe
        backend = get_backend(recipe.quant_backend)
        ctx.model = backend.quantize(
            ctx.model, spec_of(recipe), ctx.device, torch_dtype(recipe.precision)
        )
        ctx.info["quantization"] = f"{recipe.quant_backend} {self.describe(recipe)}"

    def describe(self, recipe: Any) -> str:
        if recipe.bits == 16:
            return ""
        if recipe.quant_backend == "torchao":
            return "int8 dynamic" if recipe.quant_activations else f"int{recipe.bits} weight-only"
        if recipe.bits == 8:
            return "int8"
        return str(recipe.quant_type) + ("+dq" if recipe.double_quant else "")


OPERATOR = Quantize()
