from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest
import torch

from autoslim import data, models
from autoslim.measure.perplexity import perplexity
from autoslim.models import LoadedModel
from autoslim.protocol import PerplexityProtocol
from autoslim.testing import tiny_model

PROTOCOL = PerplexityProtocol(window=64, max_windows=4, batch_size=4)


@pytest.fixture(scope="session")
def eval_ids(tiny_tok: Any, corpus: data.Corpus) -> torch.Tensor:
    return data.tokens(tiny_tok, corpus, "eval")


@pytest.fixture(scope="session")
def ppl(eval_ids: torch.Tensor) -> Callable[[Any], float]:
    def compute(model: Any) -> float:
        return perplexity(model, eval_ids, PROTOCOL).perplexity

    return compute


@pytest.fixture(scope="session")
def reference() -> models.LoadedModel:
    try:
        return models.load_model("reference")
    except Exception as e:  # the reference model is committed by the zoo issue
        pytest.skip(f"reference model not available: {e}")


@pytest.fixture
def base(tiny_tok: Any) -> Callable[..., LoadedModel]:
    def make(family: str, **overrides: Any) -> LoadedModel:
        return LoadedModel(tiny_model(family, **overrides), tiny_tok, family, "")

    return make


def weights_hash(model: Any) -> str:
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        if isinstance(value, torch.Tensor):
            digest.update(name.encode())
            digest.update(
                value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            )
    return digest.hexdigest()
