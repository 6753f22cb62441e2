"""The timed inference workload: batched prefill over eval windows, then greedy decoding.

One :class:`Workload` is fixed per study so every trial runs exactly the same work. A run is
``prefill_windows`` windows of ``protocol.window`` tokens at ``protocol.stride``, evenly spaced
across the eval split (whatever the protocol's ``max_windows``), forwarded ``prefill_batch``
at a time, followed by ``decode_tokens`` tokens generated greedily at batch 1 with the KV
cache from a prompt of ``decode_prompt_tokens`` tokens (the first eval tokens). ``warmup``
untimed runs come first, then ``repeats`` timed ones; the accelerator is synchronised at both
edges of every window. ``threads`` fixes torch's intra-op threads while measuring (0 leaves
the process's setting). The default is one: on a small shared CPU, two threads ran the same
workload ~10x slower and far noisier than one (an OpenMP barrier stalls whenever either thread
is descheduled), and batch-1 decoding of small models gains little from more.
"""

from __future__ import annotations

import glob
import statistics
import time
from dataclasses import dataclass, replace
from typing import Any

import torch

from autoslim.errors import DataError
from autoslim.measure.energy.base import EnergyMeter, EnergyReading
from autoslim.protocol import Workload


def synchronize(device: torch.device) -> None:
    """Wait for queued accelerator work, so a clock read means the work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_delay_seconds() -> float | None:
    """Seconds this process's threads have spent runnable but waiting for a CPU (Linux
    schedstat, summed over threads); None where the kernel does not expose it."""
    total = 0
    found = False
    for path in glob.glob("/proc/self/task/*/schedstat"):
        try:
            with open(path) as f:
                total += int(f.read().split()[1])
            found = True
        except (OSError, IndexError, ValueError):
            continue  # a thread that exited between the listing and the read
    return total / 1e9 if found else None


@dataclass(frozen=True)
class TimedRun:
    """One timed run: wall seconds in total and per phase, its energy, and how long the
    process waited for a CPU during it (None where unknown)."""

    seconds: float
    prefill_seconds: float
    decode_seconds: float
    energy: EnergyReading
    waited_seconds: float | None = None


class WorkloadRunner:
    """The workload's inputs, prepared once on the model's device, and the code that runs
    them on ``model``: a torch model, or a model converted into any runtime."""

    def __init__(self, model: Any, ids: torch.Tensor, workload: Workload) -> None:
        from autoslim.measure.perplexity import as_runtime_model

        self.model = as_runtime_model(model)
        self.workload = workload
        self.device = device = torch.device(self.model.device())
        protocol = workload.protocol
        spread = replace(protocol, max_windows=workload.prefill_windows or None)
        starts = spread.window_starts(len(ids))[: workload.prefill_windows]
        if len(starts) < workload.prefill_windows:
            raise DataError(
                f"workload.prefill_windows={workload.prefill_windows}: the eval split holds "
                f"only {len(starts)} windows of {protocol.window} tokens at stride "
                f"{protocol.stride}; lower prefill_windows or give more text"
            )
        windows = [ids[s : s + protocol.window] for s in starts]
        self.prefill_batches = [
            torch.stack(windows[i : i + workload.prefill_batch]).to(device)
            for i in range(0, len(windows), workload.prefill_batch)
        ]
        config = getattr(model, "config", None)  # a torch model's (Pipeline checks the rest)
        if config is not None:
            workload.check_context(config)
        self.prompt = ids[: workload.decode_prompt_tokens].unsqueeze(0).to(device)

    def prefill(self) -> None:
        for batch in self.prefill_batches:
            self.model.prefill(batch)

    def decode(self) -> None:
        """Greedy generation of ``decode_tokens`` tokens with the KV cache, batch 1."""
        self.model.decode(self.prompt, self.workload.decode_tokens)

    def run(self) -> None:
        self.prefill()
        self.decode()

    def largest(self) -> None:
        """One forward of the workload's largest input (a dry run): the first prefill batch,
        or the decode prompt when it holds more tokens."""
        inputs = [*self.prefill_batches[:1], self.prompt]
        self.model.prefill(max(inputs, key=lambda batch: batch.numel()))

    def timed(self, meter: EnergyMeter) -> TimedRun:
        """One run, metered and timed; synchronised at both edges and between phases."""
        synchronize(self.device)
        delay_before = run_delay_seconds()
        start = meter.begin()
        t0 = time.perf_counter()
        self.prefill()
        synchronize(self.device)
        t1 = time.perf_counter()
        self.decode()
        synchronize(self.device)
        t2 = time.perf_counter()
        energy = meter.end(start)
        delay_after = run_delay_seconds()
        waited = (
            delay_after - delay_before
            if delay_before is not None and delay_after is not None
            else None
        )
        return TimedRun(
            seconds=t2 - t0,
            prefill_seconds=t1 - t0,
            decode_seconds=t2 - t1,
            energy=energy,
            waited_seconds=waited,
        )


def cv(values: list[float]) -> float:
    """Coefficient of variation (sample standard deviation / mean); NaN under 2 values."""
    if len(values) < 2:
        return float("nan")
    mean = statistics.fmean(values)
    return statistics.stdev(values) / mean if mean else float("nan")
