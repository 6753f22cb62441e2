"""The perplexity protocol: one function, used everywhere a perplexity is reported.

Token-level perplexity over fixed-length windows of a token stream. Window ``w`` starts at
``w * stride``; within it every token after the first is a target predicted from the tokens
before it, and a target already scored by the previous selected window is not scored again, so
overlapping windows (``stride < window``) give every scored token more context without counting
it twice. With more windows than ``max_windows``, that many are taken evenly spaced across the
stream (deterministic). The result carries the exact number of scored tokens and the protocol.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from autoslim.protocol import PerplexityProtocol
from autoslim.runtimes.base import RuntimeModel


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    nll_per_token: float
    scored_tokens: int
    windows: int
    protocol: PerplexityProtocol

    def to_dict(self) -> dict[str, Any]:
        return {
            "perplexity": self.perplexity,
            "nll_per_token": self.nll_per_token,
            "scored_tokens": self.scored_tokens,
            "windows": self.windows,
            "protocol": self.protocol.describe(),
        }


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def as_runtime_model(model: Any) -> RuntimeModel:
    """``model`` as a RuntimeModel: itself, or a torch model wrapped in the torch runtime's."""
    from autoslim.runtimes.pytorch import TorchModel

    return model if isinstance(model, RuntimeModel) else TorchModel(model, None, 0)


def window_batches(
    ids: torch.Tensor, protocol: PerplexityProtocol
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input ids, target mask) batches: the mask marks the targets this protocol scores."""
    starts = protocol.window_starts(len(ids))
    rows: list[tuple[torch.Tensor, torch.Tensor]] = []
    scored_until = 0  # first target position not yet scored
    for s in starts:
        window = ids[s : s + protocol.window]
        mask = torch.zeros(protocol.window - 1, dtype=torch.bool)
        first_new = max(s + 1, scored_until)
        mask[first_new - s - 1 :] = True
        scored_until = s + protocol.window
        rows.append((window, mask))
    return [
        (
            torch.stack([r[0] for r in rows[i : i + protocol.batch_size]]),
            torch.stack([r[1] for r in rows[i : i + protocol.batch_size]]),
        )
        for i in range(0, len(rows), protocol.batch_size)
    ]


@torch.no_grad()
def perplexity(
    model: torch.nn.Module | RuntimeModel,
    ids: torch.Tensor,
    protocol: PerplexityProtocol | None = None,
) -> PerplexityResult:
    """Perplexity of ``model`` (a torch model, or a model converted into any runtime) on the
    token stream ``ids`` under ``protocol``."""
    protocol = protocol or PerplexityProtocol()
    scorer = as_runtime_model(model)
    was_training = isinstance(model, torch.nn.Module) and model.training
    if isinstance(model, torch.nn.Module):
        model.eval()
    total_nll = 0.0
    scored = 0
    batches = window_batches(ids, protocol)
    try:
        for inputs, mask in batches:
            logits = scorer.logits(inputs)
            logprobs = F.log_softmax(logits[:, :-1].float(), dim=-1)
            targets = inputs[:, 1:].to(logits.device)
            nll = -logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            mask = mask.to(logits.device)
            total_nll += float(nll[mask].sum())
            scored += int(mask.sum())
    finally:
        if isinstance(model, torch.nn.Module):
            model.train(was_training)
    mean = total_nll / scored
    return PerplexityResult(
        perplexity=math.exp(mean) if mean < 700 else math.inf,
        nll_per_token=mean,
        scored_tokens=scored,
        windows=sum(len(b[0]) for b in batches),
        protocol=protocol,
    )
