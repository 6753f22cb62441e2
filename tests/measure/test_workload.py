from __future__ import annotations

from typing import Any

import pytest
import torch

from autoslim.errors import ConfigError, DataError
from autoslim.measure import PerplexityProtocol, Workload
from autoslim.measure.workload import WorkloadRunner, cv
from autoslim.testing import tiny_model


def test_round_trip_through_a_dict() -> None:
    workload = Workload(
        protocol=PerplexityProtocol(window=64, max_windows=None), decode_tokens=8, repeats=3
    )
    assert Workload.from_dict(workload.to_dict()) == workload
    assert Workload.from_dict({}) == Workload()
    assert workload.prefill_tokens == workload.prefill_windows * 64


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"repeats": 0}, "workload.repeats=0"),
        ({"warmup": -1}, "workload.warmup=-1"),
        ({"prefill_batch": 2.5}, "workload.prefill_batch=2.5"),
        ({"decode_tokens": True}, "workload.decode_tokens=True"),
        ({"prefill_windows": 0, "decode_tokens": 0}, "nothing to time"),
        ({"repeat": 3}, "unknown workload key(s) repeat"),
        ({"protocol": {"windw": 64}}, "unknown workload.protocol key(s) windw"),
        ({"protocol": {"window": "64"}}, "workload.protocol.window='64'"),
        ({"protocol": {"window": 1}}, "perplexity window=1"),
        ({"protocol": 64}, "workload.protocol=64"),
    ],
)
def test_bad_values_name_the_key(values: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Workload.from_dict(values)
    assert needle in str(caught.value)


def test_decode_must_fit_the_context() -> None:
    model = tiny_model("qwen3")  # context 128
    ids = torch.arange(2000) % 100
    workload = Workload(
        decode_tokens=120,
        decode_prompt_tokens=32,
        prefill_windows=1,
        protocol=PerplexityProtocol(window=64),
    )
    with pytest.raises(ConfigError, match="exceed the model's context of 128"):
        WorkloadRunner(model, ids, workload)


def test_too_few_eval_windows() -> None:

    protocol = PerplexityProtocol(window=64, max_windows=4)
    workload = Workload(protocol=protocol, prefill_windows=32, decode_tokens=4)
    with pytest.raises(DataError, match="prefill_windows=32: the eval split holds only 31"):
        WorkloadRunner(tiny_model("qwen3"), torch.arange(2000), workload)


def test_cv() -> None:
    assert cv([2.0, 2.0, 2.0]) == 0.0
    assert cv([1.0, 3.0]) == pytest.approx(2**0.5 / 2)
    assert cv([1.0]) != cv([1.0])  # NaN: one value has no spread
