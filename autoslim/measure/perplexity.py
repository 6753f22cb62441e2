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

from autoslim.errors import ConfigError, DataError


@dataclass(frozen=True)
class PerplexityProtocol:
    window: int = 256
    stride: int = 0  # 0: equal to window (no overlap)
    max_windows: int | None = 64
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.window < 2:
            raise ConfigError(f"perplexity window={self.window}: must be at least 2 tokens")
        if self.stride == 0:
            object.__setattr__(self, "stride", self.window)
        if not 1 <= self.stride <= self.window:
            raise ConfigError(
                f"perplexity stride={self.stride}: must be between 1 and window={self.window}"
            )
        if self.max_windows is not None and self.max_windows < 1:
            raise ConfigError(f"perplexity max_windows={self.max_windows}: must be >= 1 or None")
        if self.batch_size < 1:
            raise ConfigError(f"perplexity batch_size={self.batch_size}: must be >= 1")

    def describe(self) -> str:
        cap = "all" if self.max_windows is None else f"<= {self.max_windows}"
        return f"window {self.window}, stride {self.stride}, {cap} windows evenly spaced"

    def window_starts(self, n_tokens: int) -> list[int]:
        if n_tokens < self.window:
            raise DataError(
                f"the text holds {n_tokens} tokens, fewer than one perplexity window of "
                f"{self.window}; give more text or a smaller window"
            )
        starts = list(range(0, n_tokens - self.window + 1, self.stride))
        if self.max_windows is not None and len(starts) > self.max_windows:
            picks = torch.linspace(0, len(starts) - 1, self.max_windows).round().long().tolist()
            starts = [starts[i] for i in picks]
        return starts


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
    model: torch.nn.Module, ids: torch.Tensor, protocol: PerplexityProtocol | None = None
) -> PerplexityResult:
    """Perplexity of ``model`` on the token stream ``ids`` under ``protocol``."""
    protocol = protocol or PerplexityProtocol()
    was_training = model.training
    model.eval()
    device = _model_device(model)
    total_nll = 0.0
    scored = 0
    batches = window_batches(ids, protocol)
    try:
        for inputs, mask in batches:
            logits = model(input_ids=inputs.to(device), use_cache=False).logits
            logprobs = F.log_softmax(logits[:, :-1].float(), dim=-1)
            targets = inputs[:, 1:].to(device)
            nll = -logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            mask = mask.to(device)
            total_nll += float(nll[mask].sum())
            scored += int(mask.sum())
    finally:
        model.train(was_training)
    mean = total_nll / scored
    return PerplexityResult(
        perplexity=math.exp(mean) if mean < 700 else math.inf,
        nll_per_token=mean,
        scored_tokens=scored,
        windows=sum(len(b[0]) for b in batches),
        protocol=protocol,
    )
