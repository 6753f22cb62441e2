"""Fake objectives for study tests and the sampler benchmark: no model, no torch, real
processes (a worker importing torch takes seconds to start on a busy machine).

``synthetic_measurement`` maps a Recipe to plausible (perplexity, seconds, joules): pruning,
head dropping and quantization cost perplexity and save time, distillation recovers part of
the damage, best near temperature 2. :class:`FakeObjective` serves it from a worker process
and injects faults keyed by the recipe's bit width, read from the environment (spawned
workers inherit it): ``AUTOSLIM_FAKE_FAULTS="8:raise,4:segfault"`` with faults ``raise``,
``nan``, ``noisy`` (a seconds CV of 17 %, as timed on a busy machine), ``segfault``, ``hang``,
``oom``, ``burn`` (spend ``AUTOSLIM_FAKE_CPU_SECONDS`` of its own CPU time, reporting
progress, then answer) and ``hog`` (hold ``AUTOSLIM_FAKE_HOG_BYTES`` of resident memory for
10 s, then answer); ``AUTOSLIM_FAKE_SLEEP`` seconds per trial;
``AUTOSLIM_FAKE_COSTS``: a cost model (JSON, :meth:`autoslim.search.costs.CostModel.to_dict`) the
worker publishes as if it had measured it.
"""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import time
from collections.abc import Sequence
from typing import Any

from autoslim import progress
from autoslim.recipe import Recipe
from autoslim.search.budgets import Limit
from autoslim.search.config import StudyConfig
from autoslim.search.worker import TrialAbandoned

BASE_PERPLEXITY = 80.0
BASE_SECONDS = 1.0
WATTS = 10.0
QUANT_DAMAGE = {16: 0.0, 8: 0.004, 4: 0.05}
QUANT_SPEED = {16: 1.0, 8: 1.15, 4: 1.05}
QUANT_POWER = {16: 1.0, 8: 0.75, 4: 0.6}


def cheap_stage_damage(recipe: Recipe, heads_per_layer: int = 8) -> float:
    """Relative perplexity increase right after structured pruning and head dropping."""
    heads = recipe.drop_heads_per_layer / heads_per_layer + len(recipe.drop_heads) / 32
    return 6.0 * recipe.prune_ratio**2 + 1.5 * heads**2


def synthetic_measurement(recipe: Recipe) -> dict[str, Any]:
    """A smooth, deterministic stand-in for ``measure(build(recipe))``."""
    damage = cheap_stage_damage(recipe) + QUANT_DAMAGE[recipe.bits]
    if recipe.quant_type == "fp4" and recipe.bits == 4:
        damage += 0.03
    if recipe.kd_steps:
        temperature_fit = math.exp(-(math.log(recipe.kd_temperature / 2.0) ** 2))
        recovery = 0.7 * (1 - math.exp(-recipe.kd_steps / 40)) * temperature_fit
        damage = damage * (1 - recovery) + 0.01
    heads_kept = 1 - recipe.drop_heads_per_layer / 8 - len(recipe.drop_heads) / 32
    seconds = BASE_SECONDS * (1 - 0.6 * recipe.prune_ratio) * (0.8 + 0.2 * heads_kept)
    seconds *= QUANT_SPEED[recipe.bits]
    return {
        "perplexity": BASE_PERPLEXITY * (1 + damage),
        "seconds": seconds,
        "joules": seconds * WATTS * QUANT_POWER[recipe.bits],
        "energy_source": "synthetic",
        "size_bytes": int(4e6 * (1 - recipe.prune_ratio) * recipe.bits / 16),
        "peak_memory_bytes": 0,
    }


def burn(cpu_seconds: float, steps: int = 10) -> None:
    """Spin until this process has used ``cpu_seconds`` of CPU time, in ``steps`` steps."""
    start = time.process_time()
    for step in range(1, steps + 1):
        while time.process_time() - start < cpu_seconds * step / steps:
            pass
        progress.report("burn", step, steps)


def _faults() -> dict[int, str]:
    spec = os.environ.get("AUTOSLIM_FAKE_FAULTS", "")
    pairs = (item.split(":", 1) for item in spec.split(",") if item)
    return {int(bits): fault for bits, fault in pairs}


class FakeObjective:
    """Serves ``synthetic_measurement`` with the early abort and the injected faults."""

    def __init__(self, config: StudyConfig) -> None:
        self.config = config
        self.sleep_seconds = float(os.environ.get("AUTOSLIM_FAKE_SLEEP", "0"))
        self.faults = _faults()
        self.info: dict[str, Any] = {
            "corpus_fingerprint": "fake-corpus",
            "model": config.model.name,
            "pid": os.getpid(),
        }
        if "AUTOSLIM_FAKE_COSTS" in os.environ:
            self.info["costs"] = json.loads(os.environ["AUTOSLIM_FAKE_COSTS"])

    def __call__(self, recipe: Recipe, limits: Sequence[Limit] = ()) -> dict[str, Any]:
        early = self.config.early_abort
        ratio = 1 + cheap_stage_damage(recipe)
        if early.enabled and ratio > early.max_ppl_ratio:
            raise TrialAbandoned(
                f"perplexity after the cheap stages is {ratio:.3g}x the base model's",
                {"stage": "drop_heads", "ratio": ratio},
            )
        time.sleep(self.sleep_seconds)
        fault = self.faults.get(recipe.bits)
        measurement = synthetic_measurement(recipe)
        if fault == "raise":
            raise RuntimeError(f"injected failure for {recipe.describe()}")
        if fault == "oom":
            raise MemoryError("injected out of memory")
        if fault == "nan":
            measurement["perplexity"] = math.nan
        if fault == "noisy":  # timed while the machine was busy
            measurement["seconds_cv"] = 0.17
        if fault == "segfault":
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no slow core dump
            os.kill(os.getpid(), signal.SIGSEGV)
        if fault == "hang":
            time.sleep(3600)
        if fault == "burn":
            burn(float(os.environ.get("AUTOSLIM_FAKE_CPU_SECONDS", "1")))
        if fault == "hog":
            held = bytearray(b"\x01") * int(float(os.environ["AUTOSLIM_FAKE_HOG_BYTES"]))
            time.sleep(10)
            del held
        return {"measurement": measurement, "build": {"stage_seconds": {}, "info": {}}}
