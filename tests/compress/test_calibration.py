from __future__ import annotations

from typing import Any

import pytest
import torch

from autoslim import data
from autoslim.compress.calibration import calibration_batch, input_sums
from autoslim.errors import ConfigError, DataError
from autoslim.testing import tiny_model


def test_sample_is_windows_of_the_kd_split_fixed_by_seed(tiny_tok: Any, corpus: Any) -> None:
    batch = calibration_batch(tiny_tok, corpus, windows=6, window=32)
    assert batch.shape == (6, 32)
    assert batch.dtype == torch.long
    assert torch.equal(batch, calibration_batch(tiny_tok, corpus, windows=6, window=32))
    assert not torch.equal(
        batch, calibration_batch(tiny_tok, corpus, windows=6, window=32, seed=1)
    )
    kd = data.tokens(tiny_tok, corpus, "kd")
    starts = [int(i) * 32 for i in range(len(kd) // 32)]
    windows = {tuple(kd[s : s + 32].tolist()) for s in starts}
    assert all(tuple(row.tolist()) in windows for row in batch)


def test_too_little_text_or_a_bad_shape_is_refused(tiny_tok: Any, corpus: Any) -> None:
    with pytest.raises(ConfigError, match="calibration windows=0"):
        calibration_batch(tiny_tok, corpus, windows=0)
    small = data.Corpus(
        name="tiny",
        splits={"kd": [data.Document("a.py", "x = 1\n")]},
        fingerprint="tiny",
    )
    with pytest.raises(DataError, match="KD split of corpus 'tiny'.*fewer than one"):
        calibration_batch(tiny_tok, small, window=256)


def test_input_sums_are_per_token_means_over_every_batch(tiny_tok: Any, corpus: Any) -> None:
    """Nine windows run as three batches: the mean must cover all of them, not the last."""
    model = tiny_model("qwen3")
    batch = calibration_batch(tiny_tok, corpus, windows=9, window=16)
    down = model.model.layers[0].mlp.down_proj
    seen: list[torch.Tensor] = []
    handle = down.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    means = input_sums(model, {"down": down}, batch, torch.abs)
    handle.remove()
    assert len(seen) == 3
    expected = torch.cat([x.reshape(-1, x.shape[-1]) for x in seen]).abs().mean(dim=0)
    assert torch.allclose(means["down"], expected, atol=1e-6)
