"""Calibration: a small fixed sample of the KD split, and statistics of activations on it.

Activation-aware pruning (``prune``, ``heads``, ``depth``) scores channels, heads and layers by
what the model computes on real text, not by its weights alone. The sample is drawn from the KD
split (never the eval split, so a perplexity is not measured on the text that chose the cut), is
the same for the same tokenizer, corpus and seed, and is run in batches under ``no_grad`` so
memory stays bounded by one batch of activations.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from autoslim import data
from autoslim.data import Corpus
from autoslim.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

# Windows per forward pass while collecting statistics.
BATCH_SIZE = 4


def calibration_batch(
    tokenizer: Any, corpus: Corpus, *, windows: int = 16, window: int = 256, seed: int = 0
) -> torch.Tensor:
    """``windows`` non-overlapping windows of ``window`` tokens from the KD split, shaped
    [windows, window] (fewer rows if the split holds fewer windows), chosen by ``seed``."""
    if windows < 1 or window < 2:
        raise ConfigError(
            f"calibration windows={windows}, window={window}: need at least 1 window of 2 tokens"
        )
    ids = data.tokens(tokenizer, corpus, "kd")
    available = len(ids) // window
    if available == 0:
        raise DataError(
            f"the KD split of corpus {corpus.name!r} holds {len(ids)} tokens, fewer than one "
            f"calibration window of {window}; give more text or a smaller window"
        )
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randperm(available, generator=generator)[:windows].sort().values
    return torch.stack([ids[int(p) * window : (int(p) + 1) * window] for p in picks])


def context_window(config: Any, window: int = 256) -> int:
    """``window`` clipped to the model's context length (where its config states one): the
    windows of the calibration batch and of the teacher cache alike."""
    return min(window, int(getattr(config, "max_position_embeddings", window)))


def require_calibration(
    what: str, calibration: torch.Tensor | None, alternative: str = ""
) -> torch.Tensor:
    """The calibration batch ``what`` needs, checked, or a ConfigError naming the fix."""
    if calibration is None:
        raise ConfigError(
            f"{what} scores by activations and needs a calibration batch: pass "
            f"calibration=calibration_batch(tokenizer, corpus){alternative}"
        )
    if calibration.dim() != 2 or calibration.dtype != torch.long:
        raise ConfigError(
            f"calibration must be a [windows, tokens] LongTensor, got {calibration.dtype} of "
            f"shape {tuple(calibration.shape)}"
        )
    return calibration


def forward_all(model: nn.Module, calibration: torch.Tensor) -> None:
    """Run ``model`` over ``calibration`` in batches of ``BATCH_SIZE`` windows (eval mode,
    no_grad, no cache) for the hooks registered on it."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(calibration), BATCH_SIZE):
                model(
                    input_ids=calibration[start : start + BATCH_SIZE].to(device), use_cache=False
                )
    finally:
        model.train(was_training)


def input_sums(
    model: nn.Module,
    modules: Mapping[str, nn.Module],
    calibration: torch.Tensor,
    reduce: Callable[[torch.Tensor], torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Per module: the mean over calibration tokens of ``reduce(x)``, where ``x`` is the
    module's input flattened to [tokens, features] in fp32 and ``reduce`` maps it to a
    [tokens, k] tensor (for example ``torch.abs`` for the mean absolute activation)."""
    sums: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def record(_module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach().float()
            value = reduce(x.reshape(-1, x.shape[-1])).sum(dim=0)
            sums[name] = sums[name] + value if name in sums else value

        return record

    with contextlib.ExitStack() as stack:
        for name, module in modules.items():
            stack.callback(module.register_forward_pre_hook(hook(name)).remove)
        forward_all(model, calibration)
    tokens = calibration.numel()
    logger.debug("collected input statistics of %d modules over %d tokens", len(sums), tokens)
    return {name: value / tokens for name, value in sums.items()}
