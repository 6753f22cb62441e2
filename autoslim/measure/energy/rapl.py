"""The RAPL meter: CPU package (and DRAM) energy counters under ``/sys/class/powercap``.

Linux exposes Intel RAPL, and AMD's since Zen (kernel 5.8+), as ``intel-rapl:N`` zones, each
with ``name``, ``energy_uj`` (a counter in microjoules) and ``max_energy_range_uj`` (where it
wraps back to 0). The meter sums every top-level package zone plus ``dram`` sub-zones (DRAM is
not part of the package domain); ``psys`` (the whole platform, a superset) and the ``core`` /
``uncore`` sub-zones (parts of the package) are left out so nothing counts twice. A counter that
wrapped between two reads is unwrapped; reading at least once per wrap period (minutes at
hundreds of watts) is enough, and every window edge reads. The counters update about every
millisecond. Since Linux 5.10 ``energy_uj`` is readable by root only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoslim.errors import UnsupportedError
from autoslim.measure.energy.base import EnergyMeter

POWERCAP = Path("/sys/class/powercap")
UPDATE_PERIOD_S = 0.001
_TOP_ZONE = re.compile(r"^intel-rapl:\d+$")
_SUB_ZONE = re.compile(r"^intel-rapl:\d+:\d+$")


@dataclass
class _Zone:
    path: Path
    name: str
    max_range_uj: int
    last_uj: int
    total_uj: int = 0

    def read(self) -> int:
        """Microjoules since the meter started, with wrap-around undone."""
        now = _read_int(self.path / "energy_uj")
        delta = now - self.last_uj
        if delta < 0:
            delta += self.max_range_uj
        self.total_uj += delta
        self.last_uj = now
        return self.total_uj


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except PermissionError as e:
        raise UnsupportedError(
            f"RAPL counter {path} is not readable (root only since Linux 5.10); run as root, "
            f"`sudo chmod a+r {path.parent.parent}/intel-rapl:*/energy_uj`, or use "
            "--energy estimate"
        ) from e
    except (OSError, ValueError) as e:
        raise UnsupportedError(
            f"cannot read RAPL counter {path} ({type(e).__name__}: {e}); use --energy estimate"
        ) from e


def _zones(root: Path) -> list[_Zone]:
    if not root.is_dir():
        raise UnsupportedError(f"no RAPL: {root} does not exist (not Linux, or no powercap)")
    zones: list[_Zone] = []
    for path in sorted(root.iterdir()):
        name_file = path / "name"
        if not name_file.is_file():
            continue
        name = name_file.read_text().strip()
        top = _TOP_ZONE.match(path.name) and name != "psys"
        dram = _SUB_ZONE.match(path.name) and name == "dram"
        if top or dram:
            zones.append(
                _Zone(
                    path=path,
                    name=name,
                    max_range_uj=_read_int(path / "max_energy_range_uj"),
                    last_uj=_read_int(path / "energy_uj"),
                )
            )
    if not zones:
        raise UnsupportedError(f"no RAPL: {root} holds no intel-rapl package zone")
    return zones


class RaplMeter(EnergyMeter):
    source = "rapl"
    options = frozenset({"root", "update_period_s"})

    def __init__(self, root: str | Path = POWERCAP, update_period_s: float = UPDATE_PERIOD_S):
        super().__init__(update_period_s=update_period_s)
        self.root = Path(root)
        self._zones = _zones(self.root)

    def counter_joules(self) -> float:
        return sum(zone.read() for zone in self._zones) / 1e6

    def details(self) -> dict[str, Any]:
        return {"zones": [f"{z.path.name} ({z.name})" for z in self._zones]}
