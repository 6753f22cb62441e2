"""structured_prune: remove MLP intermediate channels with torch-pruning's dependency graph.

Every block keeps the same width (stock configs carry one ``intermediate_size``), rounded to a
multiple of ``WIDTH_MULTIPLE`` so bitsandbytes' 4-bit kernels accept the shapes. Inside each block
the channels with the lowest importance go; ``importance`` is one of the names the width
operator declares (``operators/width.py``):

* ``magnitude``: torch-pruning's group L2 magnitude (gate, up and down projections together);
  needs no data, but on a trained model it is no better than chance (see DESIGN.md);
* ``activation`` (Minitron): the mean absolute value of the channel's activation (the input of
  the down projection) on a calibration batch;
* ``wanda``: Wanda's ``|W| * ||x||`` summed over the channel's column of the down projection,
  with ``||x||`` the root mean square of the channel's activation on the calibration batch;
* ``fluctuation`` (FLAP): the variance of the channel's activation on the calibration batch
  times the squared norm of its column of the down projection: what the channel's output
  varies by around its mean, which is what a compensation bias (``recovery = "bias"``)
  cannot restore.

Whatever the score, torch-pruning's dependency graph does the cutting.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from autoslim.compress.calibration import input_sums, require_calibration
from autoslim.compress.families import Family, get_path, intermediate_size, layers, set_path

logger = logging.getLogger(__name__)

WIDTH_MULTIPLE = 64


def activation_norms(
    model: Any, modules: dict[str, nn.Module], importance: str, calibration: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per module, per input feature: the mean ``|x|`` (``activation``), the root mean square
    of ``x`` (``wanda``) or the variance of ``x`` (``fluctuation``) over the calibration
    tokens."""
    if importance == "activation":
        return input_sums(model, modules, calibration, torch.abs)
    if importance == "fluctuation":
        moments = input_sums(
            model, modules, calibration, lambda x: torch.cat([x, x.square()], dim=-1)
        )
        return {
            name: (value.chunk(2)[1] - value.chunk(2)[0].square()).clamp(min=0.0)
            for name, value in moments.items()
        }
    squares = input_sums(model, modules, calibration, torch.square)
    return {name: value.sqrt() for name, value in squares.items()}


def column_weights(weight: torch.Tensor, importance: str) -> torch.Tensor | float:
    """The factor an output projection's weight ([out, in]) gives each input feature's
    activation statistic: ``sum |W|`` (``wanda``), ``sum W²`` (``fluctuation``), else 1."""
    if importance == "wanda":
        return weight.detach().float().abs().sum(dim=0)
    if importance == "fluctuation":
        return weight.detach().float().square().sum(dim=0)
    return 1.0


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


class _ChannelScores:
    """A torch-pruning importance that hands back precomputed scores of the root layer's input
    channels (torch-pruning's own ``ActivationImportance`` keeps only the last batch)."""

    def __init__(self, scores: dict[nn.Module, torch.Tensor]) -> None:
        self.scores = scores

    def __call__(self, group: Any) -> torch.Tensor:
        import torch_pruning as tp

        for item in group.items:
            module = item.dep.target.module
            if module in self.scores and item.dep.handler == tp.prune_linear_in_channels:
                return self.scores[module][torch.as_tensor(item.root_idxs)]
        raise ValueError("the pruning group holds no layer with calibration scores")


def structured_prune(
    model: Any,
    family: Family,
    ratio: float,
    *,
    importance: str = "magnitude",
    calibration: torch.Tensor | None = None,
    removed: list[list[int]] | None = None,
) -> dict[str, Any]:
    """Prune every block's MLP to the same width in place; returns what was removed.

    ``importance`` other than ``magnitude`` needs ``calibration`` (a [windows, tokens] batch,
    ``calibration.calibration_batch``). ``removed``, if given, receives each block's removed
    channel indices (the recovery stage heals them).
    """
    if importance != "magnitude":
        calibration = require_calibration(
            f"prune_importance={importance!r}", calibration, ", or use 'magnitude'"
        )
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
    norms: list[torch.Tensor] = []
    if calibration is not None and importance != "magnitude":
        outs = {str(i): get_path(block, family.mlp_out) for i, block in enumerate(blocks)}
        by_name = activation_norms(model, outs, importance, calibration)
        norms = [by_name[str(i)] for i in range(len(blocks))]
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
    magnitude = tp.importance.GroupMagnitudeImportance(p=2)
    for index, block in enumerate(blocks):
        down = get_path(block, family.mlp_out)
        scorer: Any = magnitude
        if norms:
            weight = column_weights(down.weight, importance)
            scorer = _ChannelScores({down: norms[index].to(down.weight.device) * weight})
        group = graph.get_pruning_group(down, tp.prune_linear_in_channels, list(range(width)))
        scores = scorer(group)
        # Stable order: lowest score first, ties by channel index, so the choice is reproducible.
        order = sorted(range(width), key=lambda i: (float(scores[i]), i))
        drop = sorted(order[: width - kept])
        graph.get_pruning_group(down, tp.prune_linear_in_channels, drop).prune()
        if removed is not None:
            removed.append(drop)
    if conv1d:
        for block in blocks:
            for path in (*family.mlp_in, family.mlp_out):
                set_path(block, path, _linear_to_conv1d(get_path(block, path)))
    setattr(config, family.intermediate_key, kept)
    logger.info("MLP width %d -> %d in %d blocks by %s", width, kept, len(blocks), importance)
    return info
