"""Measuring models: perplexity, drift, size, and the timed, metered inference workload."""

from __future__ import annotations

from autoslim.measure.drift import Drift, drift
from autoslim.measure.energy import (
    METERS,
    EnergyMeter,
    EnergyReading,
    EstimateMeter,
    NvmlMeter,
    RaplMeter,
    get_meter,
    probe_meters,
)
from autoslim.measure.measurement import Measurement, dry_run_peak_bytes, measure
from autoslim.measure.perplexity import PerplexityResult, perplexity
from autoslim.protocol import PerplexityProtocol, Workload

__all__ = [
    "METERS",
    "Drift",
    "EnergyMeter",
    "EnergyReading",
    "EstimateMeter",
    "Measurement",
    "NvmlMeter",
    "PerplexityProtocol",
    "PerplexityResult",
    "RaplMeter",
    "Workload",
    "drift",
    "dry_run_peak_bytes",
    "get_meter",
    "measure",
    "perplexity",
    "probe_meters",
]
