"""The NVML meter: energy of one NVIDIA GPU through ``pynvml`` (package ``nvidia-ml-py``).

Volta and newer GPUs keep a total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``, in
millijoules since the driver loaded): a window is the difference of two reads. Older GPUs only
report instantaneous power (``nvmlDeviceGetPowerUsage``, milliwatts); there a background thread
samples it every ``sample_interval_s`` and integrates it (trapezoids), and each window edge
takes a fresh sample. Both counters update about every 100 ms (``update_period_s``); shorter
windows are flagged. Under MIG the counters cover the whole GPU, not the instance: readings are
flagged ``mig_whole_gpu_energy``. NVML errors become :class:`UnsupportedError` here.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from autoslim.errors import UnsupportedError
from autoslim.measure.energy.base import EnergyMeter

try:
    import pynvml
except ImportError:  # pragma: no cover - nvidia-ml-py is a dependency
    pynvml = None

logger = logging.getLogger(__name__)

UPDATE_PERIOD_S = 0.1
SAMPLE_INTERVAL_S = 0.02
MIG_WHOLE_GPU = "mig_whole_gpu_energy"
POWER_SAMPLED = "integrated_power_samples"
INSTALL_HINT = "pip install nvidia-ml-py"


@contextlib.contextmanager
def _nvml_errors(doing: str) -> Iterator[None]:
    """Translate NVML's errors into autoslim's at the boundary."""
    try:
        yield
    except pynvml.NVMLError as e:
        raise UnsupportedError(
            f"NVML could not {doing}: {e}; check the NVIDIA driver, or use --energy estimate"
        ) from e


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlMeter(EnergyMeter):
    """``gpu`` is an NVML index, or a UUID string (``"GPU-..."``, robust to
    ``CUDA_VISIBLE_DEVICES`` renumbering)."""

    source = "nvml"
    options = frozenset({"update_period_s", "sample_interval_s"})

    @classmethod
    def for_device(cls, device: Any, **options: Any) -> NvmlMeter:
        """The meter of CUDA ``device``: by its UUID where torch knows it, else its index."""
        import torch

        if device.type != "cuda":
            raise UnsupportedError(
                f"no NVML meter for device {str(device)!r}: NVML measures NVIDIA GPUs "
                f"(CUDA devices torch sees: {torch.cuda.device_count()})"
            )
        index = device.index if device.index is not None else torch.cuda.current_device()
        uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
        return cls(f"GPU-{uuid}" if uuid is not None else index, **options)

    def __init__(
        self,
        gpu: int | str = 0,
        *,
        update_period_s: float = UPDATE_PERIOD_S,
        sample_interval_s: float = SAMPLE_INTERVAL_S,
    ) -> None:
        if pynvml is None:
            raise UnsupportedError(f"no NVML: the pynvml module is missing ({INSTALL_HINT})")
        super().__init__(update_period_s=update_period_s)
        with _nvml_errors("initialise (is an NVIDIA driver installed?)"):
            pynvml.nvmlInit()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._open = True
        try:
            with _nvml_errors(f"open GPU {gpu!r}"):
                if isinstance(gpu, str):
                    self._handle = pynvml.nvmlDeviceGetHandleByUUID(gpu)
                else:
                    self._handle = pynvml.nvmlDeviceGetHandleByIndex(gpu)
                self.gpu_name = _text(pynvml.nvmlDeviceGetName(self._handle))
            self.gpu = gpu
            self.total_energy = self._has_total_energy()
            self.mig = self._mig_enabled()
            if not self.total_energy:
                self._sample_interval_s = sample_interval_s
                self._integrated_j = 0.0
                self._last = (time.perf_counter(), self._power_w())
                self._thread = threading.Thread(
                    target=self._sample_loop, name="autoslim-nvml-power", daemon=True
                )
                self._thread.start()
        except BaseException:
            self.close()
            raise

    def _has_total_energy(self) -> bool:
        try:
            pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        except pynvml.NVMLError_NotSupported:
            logger.info("%s has no total-energy counter; sampling power", self.gpu_name)
            return False
        except pynvml.NVMLError as e:
            raise UnsupportedError(
                f"NVML could not read the energy of {self.gpu_name}: {e}; use --energy estimate"
            ) from e
        return True

    def _mig_enabled(self) -> bool:
        try:
            current, _pending = pynvml.nvmlDeviceGetMigMode(self._handle)
        except pynvml.NVMLError:  # GPUs without MIG support say "not supported"
            return False
        return bool(current)

    def _power_w(self) -> float:
        with _nvml_errors(f"read the power of {self.gpu_name}"):
            return float(pynvml.nvmlDeviceGetPowerUsage(self._handle)) / 1e3

    def _sample(self) -> float:
        """Take one power sample, add the trapezoid since the last, return joules so far."""
        with self._lock:
            now, watts = time.perf_counter(), self._power_w()
            then, last_watts = self._last
            self._integrated_j += (now - then) * (watts + last_watts) / 2
            self._last = (now, watts)
            return self._integrated_j

    def _sample_loop(self) -> None:
        while not self._stop.wait(self._sample_interval_s):
            try:
                self._sample()
            except UnsupportedError as e:
                logger.warning("power sampling stopped: %s", e)
                return

    def counter_joules(self) -> float:
        if not self.total_energy:
            return self._sample()
        with _nvml_errors(f"read the energy counter of {self.gpu_name}"):
            return float(pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)) / 1e3

    def details(self) -> dict[str, Any]:
        return {
            "gpu": self.gpu,
            "gpu_name": self.gpu_name,
            "method": "total energy counter" if self.total_energy else "power sampling",
            "mig": self.mig,
        }

    def flags(self) -> tuple[str, ...]:
        flags = () if self.total_energy else (POWER_SAMPLED,)
        return (*flags, MIG_WHOLE_GPU) if self.mig else flags

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()
