"""What every benchmark records beside its figures: the machine, the versions, the load."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from typing import Any

from autoslim.measure.measurement import versions

# CPU flags that change which precision and quantization kernels are fast.
FLAGS = ("amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_vnni", "avx512f", "avx2")


def cpu() -> dict[str, Any]:
    """CPU model, core count and the flags that matter, from /proc/cpuinfo where it exists."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(), "flags": [f for f in FLAGS if f in flags]}


def machine(*packages: str) -> dict[str, Any]:
    """The record stored beside a benchmark's table: CPU, date, versions."""
    return {
        "cpu": cpu(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "versions": versions("optuna", *packages),
    }


def describe(record: dict[str, Any]) -> str:
    """One line naming the machine and versions of a record from :func:`machine`."""
    c, v = record["cpu"], record["versions"]
    return (
        f"{c['model']}, {c['cores']} cores ({' '.join(c['flags']) or 'no AMX/AVX-512'}), "
        f"{record['date']}; " + ", ".join(f"{k} {val}" for k, val in v.items())
    )


class Load:
    """CPU time of this process and the load average over a timed window: ``cpu_wait`` is the
    share of wall time the process was not on a core (``1 - cpu / (wall * threads)``)."""

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads
        self.load_average = os.getloadavg()[0]
        self._wall = time.perf_counter()
        self._cpu = time.process_time()

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self._wall
        busy = time.process_time() - self._cpu
        wait = max(0.0, 1.0 - busy / (wall * self.threads)) if wall > 0 else 0.0
        return {
            "wall_seconds": wall,
            "cpu_seconds": busy,
            "cpu_wait": wait,
            "load_average": max(self.load_average, os.getloadavg()[0]),
        }


def best_seconds(
    run: Callable[[], Any], repeats: int = 5, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Fastest of ``repeats`` runs after a warm-up: on a machine shared with other work the
    minimum is the estimate least inflated by waiting for a CPU. ``clock=time.process_time``
    counts this process's CPU seconds instead (load-independent at 1 thread)."""
    run()
    times = []
    for _ in range(repeats):
        started = clock()
        run()
        times.append(clock() - started)
    return min(times)
