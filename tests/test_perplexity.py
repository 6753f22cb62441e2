from __future__ import annotations

import math

import pytest
import torch

from autoslim.errors import ConfigError, DataError
from autoslim.measure.perplexity import perplexity, window_batches
from autoslim.protocol import PerplexityProtocol
from autoslim.testing import tiny_model


def test_matches_the_loss_transformers_returns():
    model = tiny_model("llama")
    torch.manual_seed(1)
    ids = torch.randint(0, 500, (4 * 32,))
    result = perplexity(model, ids, PerplexityProtocol(window=32, stride=32, batch_size=3))
    with torch.no_grad():
        losses = [
            float(model(input_ids=ids[i : i + 32][None], labels=ids[i : i + 32][None]).loss)
            for i in range(0, 128, 32)
        ]
    assert result.scored_tokens == 4 * 31
    assert result.windows == 4
    assert result.perplexity == pytest.approx(math.exp(sum(losses) / 4), rel=1e-4)


def test_overlapping_windows_score_each_token_once():
    ids = torch.arange(100) % 50
    protocol = PerplexityProtocol(window=20, stride=10, max_windows=None)
    batches = window_batches(ids, protocol)
    scored = sum(int(mask.sum()) for _, mask in batches)
    # windows start at 0, 10, ..., 80: targets 1..99 are each scored exactly once
    assert scored == 99
    model = tiny_model("gpt2")
    assert perplexity(model, ids, protocol).scored_tokens == 99


def test_max_windows_are_evenly_spaced_and_deterministic():
    protocol = PerplexityProtocol(window=10, stride=10, max_windows=3)
    assert protocol.window_starts(1000) == [0, 500, 990]


def test_bad_protocol_and_short_text():
    with pytest.raises(ConfigError, match="stride"):
        PerplexityProtocol(window=8, stride=9)
    with pytest.raises(DataError, match="fewer than one perplexity window"):
        PerplexityProtocol(window=64).window_starts(10)
