"""Depth pruning: remove whole decoder layers, the ones that change their input least.

A layer's importance is its angular distance (ShortGPT's block influence, Gromov et al.'s
angular distance): the mean over calibration tokens of ``arccos(cos(x_in, x_out)) / pi`` between
the hidden state entering the layer and the one leaving it. A layer whose output points where its
input did does little, and goes first.

The result is a stock model: the decoder's layer list shrinks, ``num_hidden_layers`` and every
per-layer config list (``Family.per_layer_keys``, such as ``layer_types``) follow, and each kept
layer's ``layer_idx`` (which the KV cache is indexed by) is renumbered, so it saves, reloads in
plain transformers and generates with its cache. Layer indices in recipes (``drop_heads``) name
the ORIGINAL layers; ``remap_heads`` translates them for the model after the drop.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, overload

import torch
from torch import nn

from autoslim.compress.calibration import forward_all, require_calibration
from autoslim.compress.families import Family, layers, set_path
from autoslim.errors import ConfigError, UnsupportedError

logger = logging.getLogger(__name__)


def check(config: Any, family: Family, n: int) -> None:
    """Refuse a ``drop_layers=n`` this model cannot take, before any work starts."""
    count = int(config.num_hidden_layers)
    if not 0 <= n < count:
        raise ConfigError(
            f"drop_layers={n} is out of range: the model has {count} decoder layers and must "
            f"keep at least one; use 0..{count - 1}"
        )
    if n and family.name == "gpt2" and getattr(config, "scale_attn_by_inverse_layer_idx", False):
        raise UnsupportedError(
            "drop_layers is not supported for this gpt2 model: scale_attn_by_inverse_layer_idx "
            "scales each layer's attention by 1 / (its index + 1), so a layer that moves up "
            "would compute differently after reload; use drop_layers=0"
        )


def _hidden(value: Any) -> torch.Tensor:
    """The hidden states in a decoder layer's output (a tensor, or a tuple starting with it)."""
    hidden: torch.Tensor = value[0] if isinstance(value, tuple | list) else value
    return hidden


def layer_scores(model: Any, family: Family, calibration: torch.Tensor) -> list[float]:
    """Per decoder layer: the mean angular distance (0..1) between its input and output
    hidden states over the calibration tokens; lower means the layer matters less."""
    calibration = require_calibration("drop_layers", calibration)
    blocks = layers(model, family)
    sums = [0.0] * len(blocks)
    counts = [0] * len(blocks)
    inputs: dict[int, torch.Tensor] = {}

    def before(index: int) -> Any:
        def record(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            inputs[index] = (args[0] if args else kwargs["hidden_states"]).detach()

        return record

    def after(index: int) -> Any:
        def record(_module: nn.Module, _args: Any, _kwargs: Any, output: Any) -> None:
            x_in = inputs.pop(index).float()
            x_out = _hidden(output).detach().float()
            # A zero vector (a padding embedding) has no direction: leave such tokens out.
            valid = (x_in.norm(dim=-1) > 0) & (x_out.norm(dim=-1) > 0)
            cosine = torch.nn.functional.cosine_similarity(x_in[valid], x_out[valid], dim=-1)
            sums[index] += float(torch.arccos(cosine.clamp(-1.0, 1.0)).sum()) / math.pi
            counts[index] += int(valid.sum())

        return record

    with contextlib.ExitStack() as stack:
        for index, block in enumerate(blocks):
            pre = block.register_forward_pre_hook(before(index), with_kwargs=True)
            post = block.register_forward_hook(after(index), with_kwargs=True)
            stack.callback(pre.remove)
            stack.callback(post.remove)
        forward_all(model, calibration)
    return [value / max(count, 1) for value, count in zip(sums, counts, strict=True)]


def drop_layers(model: Any, family: Family, n: int, calibration: torch.Tensor) -> dict[str, Any]:
    """Remove the ``n`` decoder layers with the lowest ``layer_scores`` in place; returns the
    original indices kept and dropped, and the scores."""
    config: Any = model.config
    check(config, family, n)
    blocks = layers(model, family)
    info: dict[str, Any] = {"layers_before": len(blocks), "layers": len(blocks) - n}
    if n == 0:
        return info | {"kept_layers": list(range(len(blocks))), "dropped_layers": []}
    scores = layer_scores(model, family, calibration)
    ranked = sorted(range(len(blocks)), key=lambda i: (scores[i], i))
    dropped = sorted(ranked[:n])
    kept = [i for i in range(len(blocks)) if i not in dropped]
    set_path(model, family.layers_path, nn.ModuleList([blocks[i] for i in kept]))
    for new_index, old_index in enumerate(kept):
        for module in blocks[old_index].modules():
            if hasattr(module, "layer_idx"):
                setattr(module, "layer_idx", new_index)  # noqa: B010 - not an nn.Module field
    config.num_hidden_layers = len(kept)
    for key in family.per_layer_keys:
        values = getattr(config, key, None)
        if values is not None:
            setattr(config, key, [values[i] for i in kept])
    logger.info(
        "decoder layers %d -> %d, dropped %s (angular distance %s)",
        len(blocks),
        len(kept),
        dropped,
        ", ".join(f"{scores[i]:.3f}" for i in dropped),
    )
    return info | {"kept_layers": kept, "dropped_layers": dropped, "layer_scores": scores}


@overload
def remap_heads(
    drops: Mapping[int, Sequence[int]], kept_layers: Sequence[int]
) -> dict[int, list[int]]: ...


@overload
def remap_heads(
    drops: Sequence[tuple[int, int]], kept_layers: Sequence[int]
) -> tuple[tuple[int, int], ...]: ...


def remap_heads(
    drops: Mapping[int, Sequence[int]] | Sequence[tuple[int, int]], kept_layers: Sequence[int]
) -> dict[int, list[int]] | tuple[tuple[int, int], ...]:
    """Head drops keyed by ORIGINAL layer index, re-keyed for the model that keeps only
    ``kept_layers`` (original indices, in order); drops on a removed layer disappear. Takes and
    returns either ``{layer: [heads]}`` or ``((layer, head), ...)`` pairs."""
    new_index = {old: new for new, old in enumerate(kept_layers)}
    if isinstance(drops, Mapping):
        return {
            new_index[layer]: list(heads) for layer, heads in drops.items() if layer in new_index
        }
    return tuple((new_index[layer], head) for layer, head in drops if layer in new_index)
