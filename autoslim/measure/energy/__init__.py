"""Energy meters behind one interface, and the probe-and-fallback factory :func:`get_meter`.

``"auto"`` picks the best meter that works for the device being measured (NVML for a CUDA
device, RAPL for the CPU) and falls back silently to the labelled ``"estimate"``, recording
why in ``meter.fallback_reasons``. Naming a meter that is not present raises
:class:`UnsupportedError` that says what each probe found.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from autoslim.errors import ConfigError, UnsupportedError
from autoslim.measure.energy.base import EnergyMeter, EnergyReading, WindowStart
from autoslim.measure.energy.estimate import DEFAULT_WATTS_PER_CORE, EstimateMeter
from autoslim.measure.energy.nvml import NvmlMeter
from autoslim.measure.energy.rapl import RaplMeter

__all__ = [
    "DEFAULT_WATTS_PER_CORE",
    "METERS",
    "EnergyMeter",
    "EnergyReading",
    "EstimateMeter",
    "NvmlMeter",
    "RaplMeter",
    "WindowStart",
    "get_meter",
    "probe_meters",
]

logger = logging.getLogger(__name__)

# Every meter, by name; ``auto`` picks the best one the device has (NVML on a CUDA device, else
# RAPL) and falls back to the estimate. A new meter is its module and one entry here.
_METERS: dict[str, type[EnergyMeter]] = {
    meter.source: meter for meter in (NvmlMeter, RaplMeter, EstimateMeter)
}
METERS = ("auto", *_METERS)


def _build(name: str, device: torch.device, options: dict[str, Any]) -> EnergyMeter:
    meter = _METERS[name]
    return meter.for_device(device, **{k: v for k, v in options.items() if k in meter.options})


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def probe_meters(device: str | torch.device | None = None) -> dict[str, str]:
    """For each meter, ``"available"`` or why it is not, on this machine and device."""
    dev = torch.device(device) if device is not None else _default_device()
    found: dict[str, str] = {}
    for name in _METERS:
        try:
            _build(name, dev, {}).close()
        except UnsupportedError as e:
            found[name] = str(e)
        else:
            found[name] = "available"
    return found


def get_meter(
    name: str = "auto", *, device: str | torch.device | None = None, **options: Any
) -> EnergyMeter:
    """The energy meter ``name`` (one of :data:`METERS`) for ``device`` (default: CUDA when
    present, else CPU). ``options`` go to the meter that is built (``watts_per_core``,
    ``root``, ``update_period_s``, ``sample_interval_s``)."""
    if name not in METERS:
        raise ConfigError(f"energy meter {name!r}: choose one of {', '.join(METERS)}")
    known = (
        frozenset().union(*(m.options for m in _METERS.values()))
        if name == "auto"
        else _METERS[name].options
    )
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(
            f"energy meter {name!r} option(s) {', '.join(unknown)} unknown; "
            f"known: {', '.join(sorted(known)) or 'none'}"
        )
    dev = torch.device(device) if device is not None else _default_device()
    if name != "auto":
        try:
            return _build(name, dev, options)
        except UnsupportedError as e:
            others = probe_meters(dev)
            found = "; ".join(f"{k}: {v}" for k, v in others.items() if k != name)
            raise UnsupportedError(
                f"energy meter {name!r} is not available ({e}). Found: {found}. "
                "Use --energy auto to fall back (the source is recorded) or pick one found"
            ) from e
    best = "nvml" if dev.type == "cuda" else "rapl"
    try:
        return _build(best, dev, options)
    except UnsupportedError as e:
        reason = str(e)
    meter = _build("estimate", dev, options)
    meter.fallback_reasons = {best: reason}
    logger.info("energy meter: estimate (%s: %s)", best, reason)
    return meter
