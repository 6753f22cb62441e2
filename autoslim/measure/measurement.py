"""One model, every figure: :func:`measure` runs the workload and returns a :class:`Measurement`.

``seconds`` is the median wall time of one run of the configured :class:`Workload` (prefill +
decode) over its ``repeats``, ``seconds_cv`` the coefficient of variation across them;
``joules`` and ``joules_cv`` cover exactly the same windows. When a meter cannot resolve single
runs (a run shorter than its counter's update period), ``joules`` is the energy of all repeats
metered as one window divided by their number, ``joules_cv`` is NaN and ``energy_flags`` says
so. Perplexity, drift and size are measured untimed, before the workload.

Wall time is only as good as the machine is quiet. ``cpu_wait_fraction`` is the share of the
timed wall time the process spent runnable but waiting for a CPU (Linux schedstat); above
``CONTENDED_FRACTION`` the measurement carries the ``cpu_contended`` timing flag and a warning
is logged. Measured on 2 cores: quiet or with one busy process beside it, the reference's
seconds vary by 0.3-1.7 % (CV over 5 measurements) and the process waits ~0 %; with two busy
processes (3 runnable threads on 2 cores) they vary by 3-22 %, ~1.5x slower, and it waits
32-35 % of the time.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

import torch

from autoslim import __version__, progress
from autoslim.data import Corpus, tokens
from autoslim.errors import ConfigError, reject_unknown
from autoslim.measure.drift import drift
from autoslim.measure.energy import EnergyMeter, get_meter
from autoslim.measure.energy.base import EnergyReading
from autoslim.measure.footprint import PeakMemory
from autoslim.measure.perplexity import as_runtime_model, perplexity
from autoslim.measure.workload import TimedRun, WorkloadRunner, cv, synchronize
from autoslim.objectives import DEFAULT_OBJECTIVES
from autoslim.protocol import Workload

logger = logging.getLogger(__name__)

POOLED = "joules_pooled_over_repeats"
UNRESOLVED = "joules_unresolved"
CONTENDED = "cpu_contended"
# Waiting for a CPU this share of the timed wall time flags the seconds as inflated.
CONTENDED_FRACTION = 0.05


# How stored records and JSON output write non-finite figures (strict JSON has no NaN).
NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def jsonable(value: Any) -> Any:
    """Strict-JSON form: non-finite floats become ``"nan"`` / ``"inf"`` / ``"-inf"``
    (:func:`autoslim.search.trials.measurement_of` reads them back as floats)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


@dataclass
class Measurement:
    """Every figure of one model under one workload, JSON-serialisable for ``user_attrs``."""

    perplexity: float
    seconds: float
    joules: float
    energy_source: str
    seconds_cv: float
    joules_cv: float
    size_bytes: int
    peak_memory_bytes: int
    parameters: int
    top1_agreement: float | None = None
    teacher_kl: float | None = None
    nll_per_token: float = float("nan")
    scored_tokens: int = 0
    prefill_seconds: float = float("nan")
    decode_seconds: float = float("nan")
    prefill_tokens_per_second: float = float("nan")
    decode_tokens_per_second: float = float("nan")
    seconds_samples: list[float] = field(default_factory=list)
    joules_samples: list[float] = field(default_factory=list)
    energy_flags: list[str] = field(default_factory=list)
    cpu_wait_fraction: float | None = None
    timing_flags: list[str] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)

    def objectives(self, names: Sequence[str] = DEFAULT_OBJECTIVES) -> tuple[float, ...]:
        """The figures of objectives ``names``, all minimised (by default perplexity, seconds,
        joules)."""
        return tuple(float(getattr(self, name)) for name in names)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = jsonable({f.name: getattr(self, f.name) for f in fields(self)})
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Measurement:
        known = {f.name: f for f in fields(cls)}
        reject_unknown(d, known, "measurement")
        values: dict[str, Any] = {}
        for name, value in d.items():
            kind = str(known[name].type)
            if value is None or kind.startswith(("dict", "str")):
                values[name] = value
            elif kind.startswith("list[float]"):
                values[name] = [float(v) for v in value]
            elif kind.startswith("list"):
                values[name] = list(value)
            elif kind == "int":
                values[name] = int(value)
            else:
                values[name] = float(value)
        try:
            return cls(**values)
        except TypeError as e:
            raise ConfigError(f"measurement record incomplete: {e}") from e


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _rate(tokens: int, seconds: float) -> float:
    return tokens / seconds if tokens and seconds > 0 else float("nan")


def versions(*extra: str) -> dict[str, str]:
    """Versions of autoslim, Python and the packages behind a figure (plus ``extra`` ones)."""
    found = {"autoslim": __version__, "python": platform.python_version()}
    for package in ("torch", "transformers", "bitsandbytes", *extra):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "absent"
    return found


@torch.no_grad()
def dry_run_peak_bytes(model: Any, ids: torch.Tensor, workload: Workload) -> int:
    """The peak memory of one forward of ``workload``'s largest input over the eval tokens
    ``ids`` (``model``: a torch model or a converted one), on the meter :func:`measure` reports
    ``peak_memory_bytes`` with: the workload runs that forward too, so its peak is at least
    this (what decides a memory budget before measuring)."""
    runner = WorkloadRunner(model, ids, workload)
    peak = PeakMemory(runner.device)
    peak.start()
    runner.largest()
    synchronize(runner.device)
    return peak.peak_bytes()


def measure(
    model: Any,
    tokenizer: Any,
    corpus: Corpus,
    workload: Workload | None = None,
    *,
    teacher: Any = None,
    meter: str | EnergyMeter = "auto",
    device: str | None = None,
) -> Measurement:
    """Perplexity, drift from ``teacher``, size, and the workload's seconds, joules and peak
    memory for ``model`` on ``corpus``'s eval split: a torch model, or a model converted into
    any runtime (:class:`autoslim.runtimes.RuntimeModel`), measured by the same code.
    ``meter`` is a name for :func:`get_meter` (closed afterwards) or a meter you own;
    ``device`` moves a torch model there (default: where its parameters are)."""
    workload = workload or Workload()
    torch_model = model if isinstance(model, torch.nn.Module) else None
    if torch_model is not None and device is not None:
        torch_model.to(device)
    handle = as_runtime_model(model)
    dev = torch.device(handle.device())
    energy = get_meter(meter, device=dev) if isinstance(meter, str) else meter
    was_training = torch_model is not None and torch_model.training
    threads_before = torch.get_num_threads()
    if workload.threads:
        torch.set_num_threads(workload.threads)
    threads = torch.get_num_threads()
    load_before = os.getloadavg()[0]
    try:
        ids = tokens(tokenizer, corpus, "eval")
        progress.report("measure: perplexity")
        ppl = perplexity(model, ids, workload.protocol)
        progress.report("measure: drift")
        moved = drift(model, teacher, ids, workload.protocol) if teacher is not None else None
        if torch_model is not None:
            torch_model.eval()
        timed = _timed(WorkloadRunner(handle, ids, workload), workload, energy, dev)
    finally:
        torch.set_num_threads(threads_before)
        if torch_model is not None:
            torch_model.train(was_training)
        if isinstance(meter, str):
            energy.close()

    runs = timed.runs
    seconds = [r.seconds for r in runs]
    joules, joules_cv, joules_samples, flags = _joules(runs, timed.pooled, energy.source)
    cpu_wait, timing_flags = _cpu_wait(runs, timed.load_after, threads)
    prefill_seconds = statistics.median(r.prefill_seconds for r in runs)
    decode_seconds = statistics.median(r.decode_seconds for r in runs)
    return Measurement(
        perplexity=ppl.perplexity,
        seconds=statistics.median(seconds),
        joules=joules,
        energy_source=energy.source,
        seconds_cv=cv(seconds),
        joules_cv=joules_cv,
        size_bytes=handle.size_bytes(),
        peak_memory_bytes=timed.peak_bytes,
        parameters=handle.parameters(),
        top1_agreement=moved.top1_agreement if moved else None,
        teacher_kl=moved.teacher_kl if moved else None,
        nll_per_token=ppl.nll_per_token,
        scored_tokens=ppl.scored_tokens,
        prefill_seconds=prefill_seconds,
        decode_seconds=decode_seconds,
        prefill_tokens_per_second=_rate(workload.prefill_tokens, prefill_seconds),
        decode_tokens_per_second=_rate(workload.decode_tokens, decode_seconds),
        seconds_samples=seconds,
        joules_samples=joules_samples,
        energy_flags=flags,
        cpu_wait_fraction=cpu_wait,
        timing_flags=timing_flags,
        provenance=_provenance(
            handle, dev, workload, corpus, energy, timed, cpu_wait, threads, load_before
        ),
    )


class _Timed(NamedTuple):
    runs: list[TimedRun]
    pooled: EnergyReading
    peak_bytes: int
    peak_method: str
    load_after: float


def _timed(runner: WorkloadRunner, workload: Workload, energy: EnergyMeter, dev: Any) -> _Timed:
    """The workload's warm-up runs, then its timed repeats, each metered, with the peak
    memory and a pooled energy reading over all of them."""
    for _ in range(workload.warmup):
        runner.run()
    peak = PeakMemory(dev)
    peak.start()
    synchronize(dev)
    pooled_start = energy.begin()
    runs = []
    for repeat in range(workload.repeats):
        progress.report("measure: workload", repeat, workload.repeats)
        runs.append(runner.timed(energy))
    synchronize(dev)
    pooled = energy.end(pooled_start)
    peak_bytes = peak.peak_bytes()
    return _Timed(runs, pooled, peak_bytes, peak.describe()["method"], os.getloadavg()[0])


def _provenance(
    handle: Any,
    dev: Any,
    workload: Workload,
    corpus: Corpus,
    energy: EnergyMeter,
    timed: _Timed,
    cpu_wait: float | None,
    threads: int,
    load_before: float,
) -> dict[str, Any]:
    """Where, with what and under which conditions a measurement was taken."""
    return {
        "device": str(dev),
        "device_name": _device_name(dev),
        "dtype": handle.describe_dtype(),
        "runtime": handle.provenance(),
        "protocol": workload.protocol.describe(),
        "workload": workload.to_dict(),
        "corpus": corpus.name,
        "corpus_fingerprint": corpus.fingerprint,
        "meter": energy.describe(),
        "peak_memory": timed.peak_method,
        "cpu_wait": "Linux schedstat run delay, all threads"
        if cpu_wait is not None
        else "unavailable",
        "size": "state_dict tensor bytes, shared memory once"
        if handle.runtime == "torch"
        else f"bytes of the {handle.runtime} weights file",
        "torch_threads": threads,
        "load_average_1min": {"before": load_before, "after": timed.load_after},
        "versions": versions(),
        "platform": platform.platform(),
    }


def _joules(
    runs: list[TimedRun], pooled: EnergyReading, source: str
) -> tuple[float, float, list[float], list[str]]:
    """(joules, their cv, per-run samples, energy flags) of the timed runs: the median of
    per-run readings where the meter resolved every run, else the pooled reading over all of
    them divided by their number (flagged), else NaN (flagged)."""
    flags = sorted({flag for r in runs for flag in r.energy.flags})
    samples = [r.energy.joules for r in runs if r.energy.joules is not None]
    if len(samples) == len(runs):
        return statistics.median(samples), cv(samples), samples, flags
    if pooled.joules is not None:
        joules = pooled.joules / len(runs)
        flags.append(POOLED)
    else:
        joules = float("nan")
        flags = sorted({*flags, *pooled.flags, UNRESOLVED})
    logger.warning(
        "%s could not resolve single runs of %.3f s: %s; lengthen the workload "
        "(decode_tokens, prefill_windows) for per-run joules",
        source,
        statistics.median(r.seconds for r in runs),
        ", ".join(flags),
    )
    return joules, float("nan"), [], flags


def _cpu_wait(runs: list[TimedRun], load: float, threads: int) -> tuple[float | None, list[str]]:
    """The share of the timed wall time the process waited for a CPU (None where unknown),
    and the timing flags it raises."""
    seconds = sum(r.seconds for r in runs)
    waits = [r.waited_seconds for r in runs]
    known = [w for w in waits if w is not None]
    if len(known) < len(waits) or seconds <= 0:
        return None, []
    cpu_wait = sum(known) / seconds
    if cpu_wait <= CONTENDED_FRACTION:
        return cpu_wait, []
    logger.warning(
        "the process waited for a CPU %.0f%% of the timed %.2f s (load average %.2f on "
        "%s CPUs): seconds and joules are inflated and noisy; stop other work on this "
        "machine%s",
        100 * cpu_wait,
        seconds,
        load,
        os.cpu_count(),
        " or lower workload.threads" if threads > 1 else "",
    )
    return cpu_wait, [CONTENDED]
