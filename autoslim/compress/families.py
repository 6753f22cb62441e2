"""What each model family allows: where its MLP and attention live, and which operators work.

The support matrix is data (``SUPPORT``), so ``validate`` and the README tell the same story.
Head dropping needs a config that carries ``head_dim`` explicitly (Qwen2, Qwen3, Mistral, Llama);
GPT-2 and OPT derive the head size from ``hidden_size / heads``, so a model with dropped heads
would not reload under their stock configs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from autoslim.errors import UnsupportedError

OPERATORS = ("structured_prune", "drop_heads", "distill", "quantize")


@dataclass(frozen=True)
class Family:
    """Where one family keeps its blocks, and the config keys their shapes live in."""

    name: str
    layers_path: str  # attribute path from the CausalLM to its list of decoder blocks
    mlp_in: tuple[str, ...]  # paths from a block to the MLP's input projections
    mlp_out: str  # path from a block to the MLP's output projection
    intermediate_key: str  # config key of the MLP width
    attention: str | None  # path from a block to its attention (with q/k/v/o_proj), if droppable
    operators: frozenset[str]
    # config keys holding one entry per decoder layer (sliced when whole layers are dropped)
    per_layer_keys: tuple[str, ...] = ("layer_types",)


_LLAMA_LIKE = {
    "layers_path": "model.layers",
    "mlp_in": ("mlp.gate_proj", "mlp.up_proj"),
    "mlp_out": "mlp.down_proj",
    "intermediate_key": "intermediate_size",
    "attention": "self_attn",
    "operators": frozenset(OPERATORS),
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
    operators=frozenset({"structured_prune", "distill", "quantize"}),
)
FAMILIES["gpt2"] = Family(
    name="gpt2",
    layers_path="transformer.h",
    mlp_in=("mlp.c_fc",),
    mlp_out="mlp.c_proj",
    intermediate_key="n_inner",
    attention=None,
    operators=frozenset({"structured_prune", "distill", "quantize"}),
)

WHY_NOT = {
    ("gpt2", "drop_heads"): (
        "GPT-2 derives its head size from n_embd / n_head, so a model with dropped heads cannot "
        "reload under its config"
    ),
    ("opt", "drop_heads"): (
        "OPT derives its head size from hidden_size / num_attention_heads, so a model with "
        "dropped heads cannot reload under its config"
    ),
}


def family_of(config: Any) -> Family:
    name = str(config.model_type)
    if name not in FAMILIES:
        raise UnsupportedError(
            f"model family {name!r} is not supported by autoslim's compression operators; "
            f"supported: {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[name]


def require(family: Family, operator: str) -> None:
    if operator not in family.operators:
        why = WHY_NOT.get((family.name, operator), "not implemented")
        raise UnsupportedError(
            f"{operator} is not supported for {family.name} models ({why}); "
            f"{family.name} supports: {', '.join(o for o in OPERATORS if o in family.operators)}"
        )


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
