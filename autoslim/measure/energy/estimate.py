"""The estimate meter: CPU time of this process × a configured power per busy core.

Used when nothing can be read (no NVML, no readable RAPL). It is an *estimate*: every reading is
labelled ``energy_source="estimate"`` and flagged. The default of 10 W per busy core is the
order of a server core under load (a 28-core 280 W Xeon or a 64-core 225 W EPYC give 3.5-10 W
per core at TDP); change it with ``get_meter("estimate", watts_per_core=...)``. CPU time counts
every thread of this process (``time.process_time``), so other processes on a shared machine do
not inflate it, but neither the idle draw of the machine nor any accelerator is counted.
"""

from __future__ import annotations

import time
from typing import Any

from autoslim.errors import ConfigError
from autoslim.measure.energy.base import EnergyMeter

DEFAULT_WATTS_PER_CORE = 10.0
ESTIMATED = "estimated_from_cpu_time"


class EstimateMeter(EnergyMeter):
    source = "estimate"
    options = frozenset({"watts_per_core"})

    def __init__(self, watts_per_core: float = DEFAULT_WATTS_PER_CORE) -> None:
        if not (isinstance(watts_per_core, int | float) and 0 < watts_per_core < 1e4):
            raise ConfigError(
                f"estimate meter watts_per_core={watts_per_core!r}: must be a positive number "
                f"of watts (default {DEFAULT_WATTS_PER_CORE})"
            )
        super().__init__(update_period_s=time.get_clock_info("process_time").resolution)
        self.watts_per_core = float(watts_per_core)

    def counter_joules(self) -> float:
        return time.process_time() * self.watts_per_core

    def details(self) -> dict[str, Any]:
        return {
            "method": "process CPU seconds x watts per core",
            "watts_per_core": self.watts_per_core,
        }

    def flags(self) -> tuple[str, ...]:
        return (ESTIMATED,)
