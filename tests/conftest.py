from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def corpus():
    from autoslim import data

    return data.stdlib_corpus()


@pytest.fixture(scope="session")
def tiny_tok():
    from autoslim.testing import tiny_tokenizer

    return tiny_tokenizer()
