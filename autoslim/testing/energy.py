"""Fake energy hardware for tests: a meter with a predictable counter and a powercap tree."""

from __future__ import annotations

import time
from pathlib import Path

from autoslim.measure.energy.base import EnergyMeter


class FakeMeter(EnergyMeter):
    """A meter drawing a constant ``watts``: joules = watts × wall seconds, exactly."""

    source = "fake"

    def __init__(self, watts: float = 100.0, update_period_s: float = 0.0) -> None:
        super().__init__(update_period_s=update_period_s)
        self.watts = watts

    def counter_joules(self) -> float:
        return self.watts * time.perf_counter()


class FakePowercap:
    """A ``/sys/class/powercap`` tree under ``root`` whose counters tests set by hand.

    ``zones`` maps a zone folder (``"intel-rapl:0"``, ``"intel-rapl:0:2"``) to its name
    (``"package-0"``, ``"dram"``, ``"psys"``...); every counter starts at 0 and wraps at
    ``max_energy_range_uj``.
    """

    def __init__(
        self, root: Path, zones: dict[str, str], max_energy_range_uj: int = 262_143_328_850
    ) -> None:
        self.root = root
        self.max_energy_range_uj = max_energy_range_uj
        for zone, name in zones.items():
            folder = root / zone
            folder.mkdir(parents=True)
            (folder / "name").write_text(name + "\n")
            (folder / "max_energy_range_uj").write_text(f"{max_energy_range_uj}\n")
            self.set(zone, 0)

    def set(self, zone: str, energy_uj: int) -> None:
        (self.root / zone / "energy_uj").write_text(f"{energy_uj}\n")

    def get(self, zone: str) -> int:
        return int((self.root / zone / "energy_uj").read_text())

    def add(self, zone: str, energy_uj: int) -> None:
        """Advance a counter, wrapping past ``max_energy_range_uj`` like the kernel."""
        self.set(zone, (self.get(zone) + energy_uj) % self.max_energy_range_uj)
