"""What is measured, as plain data: the perplexity protocol and the timed workload.

:class:`PerplexityProtocol` (which windows of the eval tokens are scored) and :class:`Workload`
(what is timed and metered) are fixed per study and validated here; the code that runs them is
in :mod:`autoslim.measure.perplexity` and :mod:`autoslim.measure.workload`. Nothing here imports
torch at import time, so the CLI shows their defaults in ``--help`` at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from autoslim.errors import ConfigError, DataError, reject_unknown


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
            import torch

            picks = torch.linspace(0, len(starts) - 1, self.max_windows).round().long().tolist()
            starts = [starts[i] for i in picks]
        return starts


def _count(default: int, minimum: int, help: str) -> Any:
    """A workload field: an integer of at least ``minimum``; ``help`` is its CLI flag's text."""
    return field(default=default, metadata={"minimum": minimum, "help": help})


@dataclass(frozen=True)
class Workload:
    """What is timed and metered; ``seconds`` and ``joules`` are per run of it."""

    protocol: PerplexityProtocol = field(default_factory=PerplexityProtocol)
    prefill_batch: int = _count(8, 1, "windows per forward")
    # 32 windows + 16 decode tokens: seconds CV 0.3-1.7 % over 5 measurements on 2 quiet cores
    # (8 + 32 gave 2.5-6 %: batch-1 decode is the noisy phase); bench/measure.py
    prefill_windows: int = _count(32, 0, "eval windows forwarded per run (0 = no prefill)")
    decode_tokens: int = _count(
        16, 0, "tokens generated greedily at batch 1 per run (0 = no decode)"
    )
    decode_prompt_tokens: int = _count(32, 1, "prompt length for the decode")
    warmup: int = _count(1, 0, "untimed runs first")
    repeats: int = _count(5, 1, "timed runs")
    threads: int = _count(1, 0, "torch threads while measuring (0 = torch's default)")

    def __post_init__(self) -> None:
        if not isinstance(self.protocol, PerplexityProtocol):
            raise ConfigError(f"workload.protocol={self.protocol!r}: must be a PerplexityProtocol")
        for key, minimum in counts().items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"workload.{key}={value!r}: must be an integer >= {minimum}")
        if self.prefill_windows == 0 and self.decode_tokens == 0:
            raise ConfigError(
                "workload.prefill_windows=0 and workload.decode_tokens=0: nothing to time; "
                "set at least one above 0"
            )

    @property
    def prefill_tokens(self) -> int:
        return self.prefill_windows * self.protocol.window

    def check_context(self, model_config: Any) -> None:
        """Refuse a workload whose windows or decode prompt exceed the model's context."""
        context = context_length(model_config)
        window = self.protocol.window
        decode = self.decode_prompt_tokens + self.decode_tokens
        if context is None or max(window, decode) <= context:
            return
        if window > context:
            raise ConfigError(
                f"workload.protocol.window={window} (--window) exceeds the model's context of "
                f"{context} tokens; use a window of at most {context}"
            )
        raise ConfigError(
            f"workload.decode_prompt_tokens={self.decode_prompt_tokens} + "
            f"decode_tokens={self.decode_tokens} exceed the model's context of {context} "
            "tokens; lower them"
        )

    def describe(self) -> str:
        return (
            f"prefill {self.prefill_windows}x{self.protocol.window} tokens "
            f"(batch {self.prefill_batch}) + decode {self.decode_tokens} tokens (batch 1, "
            f"prompt {self.decode_prompt_tokens}); {self.warmup} warm-up, "
            f"{self.repeats} repeats" + (f", {self.threads} threads" if self.threads else "")
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Workload:
        """Rebuild from :meth:`to_dict`'s shape; missing keys take defaults."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"workload={d!r}: must be a table of keys")
        reject_unknown(d, (f.name for f in fields(cls)), "workload")
        values = dict(d)
        if "protocol" in values:
            values["protocol"] = _protocol_from(values["protocol"])
        return cls(**values)


def counts() -> dict[str, int]:
    """Each integer field of :class:`Workload` and the least it may be."""
    return {f.name: f.metadata["minimum"] for f in fields(Workload) if "minimum" in f.metadata}


def _protocol_from(d: Any) -> PerplexityProtocol:
    if isinstance(d, PerplexityProtocol):
        return d
    if not isinstance(d, Mapping):
        raise ConfigError(f"workload.protocol={d!r}: must be a table of keys")
    reject_unknown(d, (f.name for f in fields(PerplexityProtocol)), "workload.protocol")
    for key, value in d.items():
        if key == "max_windows" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"workload.protocol.{key}={value!r}: must be an integer")
    return PerplexityProtocol(**d)


def context_length(config: Any) -> int | None:
    """The longest sequence a model with this config attends over (None if it does not say)."""
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None
