from __future__ import annotations

import os

import pytest
import torch

from autoslim.testing.cpu import CPU_CLASSES, fake_cpu

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


@pytest.fixture(params=sorted(CPU_CLASSES))
def cpu_class(request):
    """Run the test once per CPU class, with that class's flags faked (children included)."""
    with fake_cpu(request.param):
        yield request.param


@pytest.fixture
def bf16_cpu():
    """A CPU that computes bf16 natively (AVX512-BF16 without AMX), faked on any machine: torch
    emulates bf16 where the real CPU lacks it, which is slow but computes the same."""
    with fake_cpu("avx512_bf16"):
        yield
