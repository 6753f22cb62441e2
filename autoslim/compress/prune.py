"""structured_prune: remove MLP intermediate channels with torch-pruning's dependency graph.

Every block keeps the same width (stock configs carry one ``intermediate_size``), rounded to a
multiple of ``WIDTH_MULTIPLE`` so bitsandbytes' 4-bit kernels accept the shapes. Inside each block
the channels with the smallest group magnitude (gate, up and down projections together) go.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from autoslim.compress.families import Family, get_path, intermediate_size, layers, set_path

logger = logging.getLogger(__name__)

WIDTH_MULTIPLE = 64


def pruned_width(width: int, ratio: float) -> int:
    """The MLP width kept for ``ratio``: rounded to a multiple of 64, at least 64."""
    if ratio == 0:
        return width
    kept = round(width * (1.0 - ratio) / WIDTH_MULTIPLE) * WIDTH_MULTIPLE
    return max(WIDTH_MULTIPLE, min(width, kept))


def _conv1d_to_linear(conv: Any) -> nn.Linear:
    """GPT-2's Conv1D (weight stored in x out) as an equivalent nn.Linear."""
    n_in, n_out = conv.weight.shape
    linear = nn.Linear(n_in, n_out, device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.T)
        linear.bias.copy_(conv.bias)
    return linear


def _linear_to_conv1d(linear: nn.Linear) -> nn.Module:
    from transformers.pytorch_utils import Conv1D

    conv = Conv1D(linear.out_features, linear.in_features)
    conv.to(device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(linear.weight.T)
        conv.bias.copy_(linear.bias)
    return conv


def structured_prune(model: Any, family: Family, ratio: float) -> dict[str, Any]:
    """Prune every block's MLP to the same width in place; returns what was removed."""
    try:
        import torch_pruning as tp
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError(
            "structured pruning needs torch-pruning: pip install torch-pruning"
        ) from e

    config: Any = model.config
    width = intermediate_size(config, family)
    kept = pruned_width(width, ratio)
    info: dict[str, Any] = {
        "intermediate_size_before": width,
        "intermediate_size": kept,
        "mlp_fraction_removed": 1.0 - kept / width,
    }
    if kept == width:
        return info
    blocks = layers(model, family)
    conv1d = family.name == "gpt2"
    if conv1d:
        for block in blocks:
            for path in (*family.mlp_in, family.mlp_out):
                set_path(block, path, _conv1d_to_linear(get_path(block, path)))
    device = next(model.parameters()).device
    example = torch.zeros(1, 8, dtype=torch.long, device=device)
    graph = tp.DependencyGraph().build_dependency(
        model,
        example_inputs={"input_ids": example, "use_cache": False},
        output_transform=lambda out: out.logits,
        verbose=False,
    )
    importance = tp.importance.GroupMagnitudeImportance(p=2)
    for block in blocks:
        down = get_path(block, family.mlp_out)
        group = graph.get_pruning_group(down, tp.prune_linear_in_channels, list(range(width)))
        scores = importance(group)
        # Stable order: lowest score first, ties by channel index, so the choice is reproducible.
        order = sorted(range(width), key=lambda i: (float(scores[i]), i))
        drop = sorted(order[: width - kept])
        graph.get_pruning_group(down, tp.prune_linear_in_channels, drop).prune()
    if conv1d:
        for block in blocks:
            for path in (*family.mlp_in, family.mlp_out):
                set_path(block, path, _linear_to_conv1d(get_path(block, path)))
    setattr(config, family.intermediate_key, kept)
    logger.info("MLP width %d -> %d in %d blocks", width, kept, len(blocks))
    return info
