from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import replace
from typing import Any

import pytest
import torch

from autoslim.compress.size import parameter_count, size_bytes
from autoslim.errors import ConfigError, UnsupportedError
from autoslim.measure import Measurement, PerplexityProtocol, Workload, measure, perplexity
from autoslim.measure.energy.base import SHORT_WINDOW, EnergyReading, WindowStart
from autoslim.measure.measurement import CONTENDED, CONTENDED_FRACTION, POOLED, UNRESOLVED
from autoslim.measure.workload import run_delay_seconds
from autoslim.testing import tiny_model
from autoslim.testing.energy import FakeMeter

SMALL = Workload(
    protocol=PerplexityProtocol(window=32, max_windows=4, batch_size=4),
    prefill_batch=2,
    prefill_windows=2,
    decode_tokens=4,
    decode_prompt_tokens=8,
    warmup=0,
    repeats=3,
)


@pytest.fixture(scope="module")
def student() -> Any:
    return tiny_model("qwen3", seed=0)


@pytest.fixture(scope="module")
def measured(student: Any, tiny_tok: Any, corpus: Any) -> Measurement:
    return measure(student, tiny_tok, corpus, SMALL, teacher=student, meter=FakeMeter(50.0))


def test_every_figure_is_there(measured: Measurement, student: Any, tiny_tok: Any, corpus: Any):
    from autoslim import data

    expected = perplexity(student, data.tokens(tiny_tok, corpus, "eval"), SMALL.protocol)
    assert measured.perplexity == expected.perplexity
    assert measured.scored_tokens == expected.scored_tokens
    assert len(measured.seconds_samples) == len(measured.joules_samples) == SMALL.repeats
    assert min(measured.seconds_samples) <= measured.seconds <= max(measured.seconds_samples)
    assert measured.seconds_cv >= 0
    assert measured.prefill_seconds + measured.decode_seconds == pytest.approx(
        measured.seconds, rel=0.5
    )
    # The fake meter draws 50 W: joules cover the same windows as seconds.
    assert measured.joules == pytest.approx(50.0 * measured.seconds, rel=0.2)
    assert measured.energy_source == "fake"
    assert measured.parameters == student.num_parameters()  # transformers' own count
    assert measured.peak_memory_bytes > 0
    # the figures a study minimises, in the order its [objectives] names them
    assert measured.objectives(("joules", "perplexity")) == (measured.joules, measured.perplexity)


def test_provenance(measured: Measurement, corpus: Any) -> None:
    prov = measured.provenance
    assert prov["device"] == "cpu"
    assert prov["dtype"] == "float32"
    assert prov["corpus_fingerprint"] == corpus.fingerprint
    assert prov["protocol"] == SMALL.protocol.describe()
    assert Workload.from_dict(prov["workload"]) == SMALL
    assert prov["meter"]["source"] == "fake"
    assert {"torch", "transformers", "autoslim"} <= set(prov["versions"])


def test_teacher_against_itself_has_no_drift(measured: Measurement) -> None:
    assert measured.top1_agreement == 1.0
    assert measured.teacher_kl == pytest.approx(0.0, abs=1e-9)


def test_drift_from_a_different_model(student: Any, tiny_tok: Any, corpus: Any) -> None:
    teacher = tiny_model("qwen3", seed=1)
    m = measure(student, tiny_tok, corpus, SMALL, teacher=teacher, meter=FakeMeter())
    assert m.top1_agreement is not None and 0.0 <= m.top1_agreement < 1.0
    assert m.teacher_kl is not None and m.teacher_kl > 0.0


def test_no_teacher_no_drift(student: Any, tiny_tok: Any, corpus: Any) -> None:
    m = measure(student, tiny_tok, corpus, SMALL, meter=FakeMeter())
    assert m.top1_agreement is None and m.teacher_kl is None


def test_json_round_trip(measured: Measurement) -> None:
    text = json.dumps(measured.to_dict(), allow_nan=False)
    again = Measurement.from_dict(json.loads(text))
    assert again == measured


def test_non_finite_figures_survive_strict_json(measured: Measurement) -> None:
    record = measured.to_dict()
    record.update(perplexity="inf", joules_cv="nan", joules_samples=[])
    again = Measurement.from_dict(json.loads(json.dumps(record, allow_nan=False)))
    assert again.perplexity == math.inf and math.isnan(again.joules_cv)
    assert again.to_dict()["joules_cv"] == "nan"


def test_from_dict_rejects_unknown_and_missing_keys(measured: Measurement) -> None:
    with pytest.raises(ConfigError, match="unknown measurement key"):
        Measurement.from_dict({**measured.to_dict(), "jouls": 1.0})
    record = measured.to_dict()
    del record["joules"]
    with pytest.raises(ConfigError, match="joules"):
        Measurement.from_dict(record)


class CoarseMeter(FakeMeter):
    """Cannot resolve one run: the first ``blind`` windows come back flagged short."""

    def __init__(self, blind: int) -> None:
        super().__init__(watts=40.0)
        self.blind = blind

    def end(self, start: WindowStart) -> EnergyReading:
        reading = super().end(start)
        if self.blind > 0:
            self.blind -= 1
            return EnergyReading(None, reading.seconds, self.source, (SHORT_WINDOW,))
        return reading


def test_short_runs_are_pooled_never_zero(student: Any, tiny_tok: Any, corpus: Any) -> None:
    m = measure(student, tiny_tok, corpus, SMALL, meter=CoarseMeter(blind=SMALL.repeats))
    assert POOLED in m.energy_flags and SHORT_WINDOW in m.energy_flags
    assert m.joules > 0 and m.joules_samples == []
    assert math.isnan(m.joules_cv)


def test_unresolved_energy_is_nan_not_zero(student: Any, tiny_tok: Any, corpus: Any) -> None:
    m = measure(student, tiny_tok, corpus, SMALL, meter=CoarseMeter(blind=SMALL.repeats + 1))
    assert UNRESOLVED in m.energy_flags
    assert math.isnan(m.joules)


def test_auto_meter_records_its_source(student: Any, tiny_tok: Any, corpus: Any) -> None:
    m = measure(student, tiny_tok, corpus, SMALL)
    assert m.energy_source in ("rapl", "estimate")
    assert m.provenance["meter"]["source"] == m.energy_source


def test_meter_not_present(student: Any, tiny_tok: Any, corpus: Any) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UnsupportedError, match="'nvml' is not available"):
        measure(student, tiny_tok, corpus, SMALL, meter="nvml")


def test_size_counts_tied_weights_once() -> None:
    tied = tiny_model("qwen3", tie_word_embeddings=True)
    untied = tiny_model("qwen3", tie_word_embeddings=False)
    embedding = tied.get_input_embeddings().weight
    assert size_bytes(untied) - size_bytes(tied) == embedding.nbytes
    assert size_bytes(untied) == sum(p.nbytes for p in untied.parameters())


def test_size_of_4bit_weights_is_the_packed_storage() -> None:
    bnb = pytest.importorskip("bitsandbytes")
    dense = torch.nn.Linear(256, 128, bias=False)
    quantized = bnb.nn.Linear4bit(256, 128, bias=False, quant_type="nf4")
    quantized.weight = bnb.nn.Params4bit(dense.weight.data.clone(), requires_grad=False)
    quantized = quantized.to("cpu")
    assert parameter_count(quantized) == parameter_count(dense) == 256 * 128
    # Half a byte per weight, plus absmax and quant-map tensors.
    assert 256 * 128 // 2 <= size_bytes(quantized) < size_bytes(dense) // 6


def test_threads_are_set_while_measuring_and_restored(
    student: Any, tiny_tok: Any, corpus: Any
) -> None:
    before = torch.get_num_threads()
    m = measure(student, tiny_tok, corpus, SMALL, meter=FakeMeter())
    assert m.provenance["torch_threads"] == SMALL.threads == 1
    assert torch.get_num_threads() == before


def test_waiting_for_a_cpu_is_measured_and_flagged(
    student: Any, tiny_tok: Any, corpus: Any, caplog: pytest.LogCaptureFixture
) -> None:
    if run_delay_seconds() is None:
        pytest.skip("no schedstat on this kernel")
    # One busy process per CPU beside the measuring thread: it gets about n/(n+1) of a CPU.
    spin = "import time\nend = time.time() + 60\nwhile time.time() < end: pass"
    hogs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(0.2)
        busy = replace(SMALL, decode_tokens=64, repeats=10)  # ~0.4 s timed
        m = measure(student, tiny_tok, corpus, busy, meter=FakeMeter())
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert m.cpu_wait_fraction is not None and m.cpu_wait_fraction > CONTENDED_FRACTION
    assert m.timing_flags == [CONTENDED]
    assert "waited for a CPU" in caplog.text
    assert "lower workload.threads" not in caplog.text  # it measured on 1 thread already
    assert Measurement.from_dict(json.loads(json.dumps(m.to_dict()))).timing_flags == [CONTENDED]


def test_cpu_wait_unknown_where_the_kernel_does_not_say(
    student: Any, tiny_tok: Any, corpus: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("autoslim.measure.workload.run_delay_seconds", lambda: None)
    m = measure(student, tiny_tok, corpus, SMALL, meter=FakeMeter())
    assert m.cpu_wait_fraction is None and m.timing_flags == []
    assert m.provenance["cpu_wait"] == "unavailable"
