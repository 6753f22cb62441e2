"""Where each model family keeps its blocks: decoder layers, MLP projections, attention.

Which operators a family supports is declared by each operator (``Operator.unsupported``
in ``autoslim/operators/``), so ``validate`` and README's support matrix tell one story.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from autoslim.errors import UnsupportedError


@dataclass(frozen=True)
class Family:
    """Where one family keeps its blocks, and the config keys their shapes live in."""

    name: str
    layers_path: str  # attribute path from the CausalLM to its list of decoder blocks
    mlp_in: tuple[str, ...]  # paths from a block to the MLP's input projections
    mlp_out: str  # path from a block to the MLP's output projection
    intermediate_key: str  # config key of the MLP width
    attention: str | None  # path from a block to its attention (with q/k/v/o_proj), if droppable
    # config keys holding one entry per decoder layer (sliced when whole layers are dropped)
    per_layer_keys: tuple[str, ...] = ("layer_types",)


_LLAMA_LIKE = {
    "layers_path": "model.layers",
    "mlp_in": ("mlp.gate_proj", "mlp.up_proj"),
    "mlp_out": "mlp.down_proj",
    "intermediate_key": "intermediate_size",
    "attention": "self_attn",
}

FAMILIES: dict[str, Family] = {
    name: Family(name=name, **_LLAMA_LIKE)  # type: ignore[arg-type]
    for name in ("qwen2", "qwen3", "mistral", "llama")
}
FAMILIES["opt"] = Family(
    name="opt",
    layers_path="model.decoder.layers",
    mlp_in=("fc1",),
    mlp_out="fc2",
    intermediate_key="ffn_dim",
    attention=None,
)
FAMILIES["gpt2"] = Family(
    name="gpt2",
    layers_path="transformer.h",
    mlp_in=("mlp.c_fc",),
    mlp_out="mlp.c_proj",
    intermediate_key="n_inner",
    attention=None,
)


def family_of(config: Any) -> Family:
    name = str(config.model_type)
    if name not in FAMILIES:
        raise UnsupportedError(
            f"model family {name!r} is not supported by autoslim's compression operators; "
            f"supported: {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[name]


def get_path(root: Any, path: str) -> Any:
    for part in path.split("."):
        root = getattr(root, part)
    return root


def set_path(root: Any, path: str, value: Any) -> None:
    parent, _, name = path.rpartition(".")
    setattr(get_path(root, parent) if parent else root, name, value)


def layers(model: nn.Module, family: Family) -> list[nn.Module]:
    return list(get_path(model, family.layers_path))


def intermediate_size(config: Any, family: Family) -> int:
    value = getattr(config, family.intermediate_key, None)
    if value is None:  # GPT-2 leaves n_inner unset to mean 4 * n_embd
        return 4 * int(config.n_embd)
    return int(value)
