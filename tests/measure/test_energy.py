from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pynvml
import pytest

from autoslim.errors import ConfigError, UnsupportedError
from autoslim.measure import METERS, EnergyMeter, get_meter
from autoslim.measure.energy import estimate, nvml
from autoslim.measure.energy.base import COUNTER_STALLED, SHORT_WINDOW
from autoslim.measure.energy.estimate import ESTIMATED, EstimateMeter
from autoslim.measure.energy.nvml import MIG_WHOLE_GPU, POWER_SAMPLED, NvmlMeter
from autoslim.measure.energy.rapl import RaplMeter
from autoslim.testing.energy import FakePowercap

GPU_NAME = "NVIDIA Fake V100"


@dataclass
class FakeGpu:
    """What the mocked NVML reports: a total-energy counter (mJ) and power (mW)."""

    energy_mj: int = 5_000_000
    power_mw: int = 250_000
    total_energy: bool = True
    mig: bool = False


@pytest.fixture
def fake_nvml() -> Iterator[tuple[Any, FakeGpu]]:
    gpu = FakeGpu()

    def total_energy(handle: Any) -> int:
        if not gpu.total_energy:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return gpu.energy_mj

    with mock.patch.object(nvml, "pynvml", autospec=True) as fake:
        # Exception classes stay real so `except` clauses work.
        fake.NVMLError = pynvml.NVMLError
        fake.NVMLError_NotSupported = pynvml.NVMLError_NotSupported
        fake.nvmlDeviceGetName.return_value = GPU_NAME
        fake.nvmlDeviceGetTotalEnergyConsumption.side_effect = total_energy
        fake.nvmlDeviceGetPowerUsage.side_effect = lambda handle: gpu.power_mw
        fake.nvmlDeviceGetMigMode.side_effect = lambda handle: (int(gpu.mig), int(gpu.mig))
        yield fake, gpu


@dataclass
class Metered:
    meter: EnergyMeter
    spend: Callable[[float], None]  # make the hardware consume this many joules


@pytest.fixture(params=["nvml", "rapl", "estimate"])
def metered(request: Any, tmp_path: Path, monkeypatch: Any) -> Iterator[Metered]:
    if request.param == "nvml":
        with mock.patch.object(nvml, "pynvml", autospec=True) as fake:
            fake.NVMLError = pynvml.NVMLError
            fake.NVMLError_NotSupported = pynvml.NVMLError_NotSupported
            fake.nvmlDeviceGetName.return_value = GPU_NAME
            fake.nvmlDeviceGetMigMode.return_value = (0, 0)
            gpu = FakeGpu()
            fake.nvmlDeviceGetTotalEnergyConsumption.side_effect = lambda h: gpu.energy_mj

            def spend_gpu(joules: float) -> None:
                gpu.energy_mj += round(joules * 1e3)

            meter = NvmlMeter(0, update_period_s=1e-3)
            yield Metered(meter, spend_gpu)
            meter.close()
    elif request.param == "rapl":
        tree = FakePowercap(tmp_path, {"intel-rapl:0": "package-0", "intel-rapl:1": "package-1"})

        def spend_cpu(joules: float) -> None:
            tree.add("intel-rapl:0", round(joules * 1e6 / 2))
            tree.add("intel-rapl:1", round(joules * 1e6 / 2))

        yield Metered(RaplMeter(tmp_path, update_period_s=1e-3), spend_cpu)
    else:
        clock = {"cpu_s": 100.0}
        monkeypatch.setattr(estimate.time, "process_time", lambda: clock["cpu_s"])
        meter = EstimateMeter(watts_per_core=8.0)

        def spend_cpu_time(joules: float) -> None:
            clock["cpu_s"] += joules / 8.0

        yield Metered(meter, spend_cpu_time)


class TestEveryMeter:
    """The contract every backend keeps."""

    def test_window_gives_the_energy_spent_in_it(self, metered: Metered) -> None:
        start = metered.meter.begin()
        metered.spend(12.5)
        time.sleep(0.005)
        reading = metered.meter.end(start)
        assert reading.joules == pytest.approx(12.5, rel=1e-6)
        assert reading.seconds >= 0.005
        assert reading.source == metered.meter.source
        assert SHORT_WINDOW not in reading.flags

    def test_consecutive_windows_add_up(self, metered: Metered) -> None:
        outer = metered.meter.begin()
        for joules in (1.0, 2.0, 3.0):
            start = metered.meter.begin()
            metered.spend(joules)
            time.sleep(0.002)
            assert metered.meter.end(start).joules == pytest.approx(joules, rel=1e-6)
        assert metered.meter.end(outer).joules == pytest.approx(6.0, rel=1e-6)

    def test_short_window_is_flagged_not_zero(self, metered: Metered) -> None:
        metered.meter.update_period_s = 60.0
        start = metered.meter.begin()
        metered.spend(1.0)
        reading = metered.meter.end(start)
        assert reading.joules is None
        assert SHORT_WINDOW in reading.flags

    def test_counter_that_did_not_move_is_flagged_not_zero(self, metered: Metered) -> None:
        start = metered.meter.begin()
        time.sleep(0.002)
        reading = metered.meter.end(start)
        assert reading.joules is None
        assert COUNTER_STALLED in reading.flags

    def test_describe_names_the_source(self, metered: Metered) -> None:
        info = metered.meter.describe()
        assert info["source"] == metered.meter.source
        assert info["source"] in METERS
        assert info["update_period_s"] > 0

    def test_a_closed_meter_still_describes_itself(self, metered: Metered) -> None:
        # measure() writes the meter's provenance after it closed the meter; closing twice
        # (a with-block and a finally) is harmless
        metered.meter.close()
        metered.meter.close()
        info = metered.meter.describe()
        assert info["source"] == metered.meter.source and info["update_period_s"] > 0


class TestNvml:
    def test_total_energy_counter_on_volta_and_newer(self, fake_nvml: Any) -> None:
        fake, _gpu = fake_nvml
        with NvmlMeter(0) as meter:
            assert meter.details()["method"] == "total energy counter"
            assert meter.describe()["gpu_name"] == GPU_NAME
            assert meter.flags() == ()
        fake.nvmlInit.assert_called_once_with()
        fake.nvmlDeviceGetHandleByIndex.assert_called_once_with(0)
        fake.nvmlShutdown.assert_called_once_with()

    def test_gpu_by_uuid(self, fake_nvml: Any) -> None:
        fake, _gpu = fake_nvml
        NvmlMeter("GPU-1234").close()
        fake.nvmlDeviceGetHandleByUUID.assert_called_once_with("GPU-1234")

    def test_power_sampling_before_volta(self, fake_nvml: Any) -> None:
        fake, gpu = fake_nvml
        gpu.total_energy = False
        with NvmlMeter(0, sample_interval_s=0.005, update_period_s=0.01) as meter:
            start = meter.begin()
            time.sleep(0.1)
            reading = meter.end(start)
        assert meter.details()["method"] == "power sampling"
        assert POWER_SAMPLED in reading.flags
        # 250 W held for the whole window; the window's edges take their own samples.
        assert reading.joules == pytest.approx(250.0 * reading.seconds, rel=0.05)
        assert fake.nvmlDeviceGetPowerUsage.call_count > 3

    def test_mig_readings_say_whole_gpu(self, fake_nvml: Any) -> None:
        _fake, gpu = fake_nvml
        gpu.mig = True
        with NvmlMeter(0) as meter:
            assert meter.describe()["mig"] is True
            assert MIG_WHOLE_GPU in meter.flags()

    def test_gpu_without_mig_support(self, fake_nvml: Any) -> None:
        fake, _gpu = fake_nvml
        fake.nvmlDeviceGetMigMode.side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        with NvmlMeter(0) as meter:
            assert meter.describe()["mig"] is False

    def test_driver_errors_are_translated(self, fake_nvml: Any) -> None:
        fake, _gpu = fake_nvml
        fake.nvmlInit.side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
        with pytest.raises(UnsupportedError, match="NVML could not initialise") as caught:
            NvmlMeter(0)
        assert isinstance(caught.value.__cause__, pynvml.NVMLError)

    def test_read_error_mid_run_is_translated(self, fake_nvml: Any) -> None:
        fake, _gpu = fake_nvml
        with NvmlMeter(0) as meter:
            fake.nvmlDeviceGetTotalEnergyConsumption.side_effect = pynvml.NVMLError(
                pynvml.NVML_ERROR_GPU_IS_LOST
            )
            with pytest.raises(UnsupportedError, match=GPU_NAME):
                meter.counter_joules()

    def test_missing_pynvml_gives_install_hint(self, monkeypatch: Any) -> None:
        monkeypatch.setattr(nvml, "pynvml", None)
        with pytest.raises(UnsupportedError, match="pip install nvidia-ml-py"):
            NvmlMeter(0)


class TestRapl:
    def test_counter_wraparound(self, tmp_path: Path) -> None:
        tree = FakePowercap(tmp_path, {"intel-rapl:0": "package-0"}, max_energy_range_uj=1000)
        tree.set("intel-rapl:0", 900)
        meter = RaplMeter(tmp_path, update_period_s=0.0)
        start = meter.begin()
        tree.add("intel-rapl:0", 250)  # 900 -> 1150 wraps to 150
        assert tree.get("intel-rapl:0") == 150
        reading = meter.end(start)
        assert reading.joules == pytest.approx(250e-6)

    def test_sums_packages_and_dram_without_double_counting(self, tmp_path: Path) -> None:
        zones = {
            "intel-rapl:0": "package-0",
            "intel-rapl:0:0": "core",
            "intel-rapl:0:1": "dram",
            "intel-rapl:1": "package-1",
            "intel-rapl:2": "psys",
        }
        tree = FakePowercap(tmp_path, zones)
        meter = RaplMeter(tmp_path, update_period_s=0.0)
        start = meter.begin()
        for zone in zones:
            tree.add(zone, 1_000_000)
        assert meter.end(start).joules == pytest.approx(3.0)
        assert meter.details()["zones"] == [
            "intel-rapl:0 (package-0)",
            "intel-rapl:0:1 (dram)",
            "intel-rapl:1 (package-1)",
        ]

    def test_no_powercap_is_unsupported(self, tmp_path: Path) -> None:
        with pytest.raises(UnsupportedError, match="does not exist"):
            RaplMeter(tmp_path / "missing")
        with pytest.raises(UnsupportedError, match="no intel-rapl package zone"):
            RaplMeter(tmp_path)

    def test_unreadable_counter_says_how_to_fix(self, tmp_path: Path) -> None:
        FakePowercap(tmp_path, {"intel-rapl:0": "package-0"})
        real_read_text = Path.read_text

        def read_text(path: Path) -> str:
            if path.name == "energy_uj":  # root-only since Linux 5.10
                raise PermissionError(13, "Permission denied")
            return real_read_text(path)

        with (
            mock.patch.object(Path, "read_text", autospec=True, side_effect=read_text),
            pytest.raises(UnsupportedError, match="root only"),
        ):
            RaplMeter(tmp_path)


class TestEstimate:
    def test_is_labelled_an_estimate(self) -> None:
        meter = EstimateMeter()
        assert meter.source == "estimate"
        assert ESTIMATED in meter.flags()
        assert meter.describe()["watts_per_core"] == 10.0

    def test_counts_cpu_time_of_this_process(self) -> None:
        meter = EstimateMeter(watts_per_core=2.0)
        cpu = time.process_time()
        start = meter.begin()
        total = sum(i * i for i in range(300_000))
        reading = meter.end(start)
        assert total > 0
        assert reading.joules == pytest.approx(2.0 * (time.process_time() - cpu), rel=0.2)

    @pytest.mark.parametrize("watts", [0, -5, "10"])
    def test_bad_watts(self, watts: Any) -> None:
        with pytest.raises(ConfigError, match="watts_per_core"):
            EstimateMeter(watts_per_core=watts)


class TestGetMeter:
    def test_unknown_meter(self) -> None:
        with pytest.raises(ConfigError, match="'bogus': choose one of auto, nvml, rapl"):
            get_meter("bogus")

    def test_unknown_option(self) -> None:
        with pytest.raises(ConfigError, match="wats_per_core"):
            get_meter("estimate", wats_per_core=3)

    def test_auto_prefers_rapl_on_cpu(self, tmp_path: Path) -> None:
        FakePowercap(tmp_path, {"intel-rapl:0": "package-0"})
        meter = get_meter("auto", device="cpu", root=tmp_path)
        assert meter.source == "rapl"

    def test_auto_falls_back_silently_and_records_why(self, tmp_path: Path) -> None:
        meter = get_meter("auto", device="cpu", root=tmp_path / "missing", watts_per_core=7.0)
        assert meter.source == "estimate"
        assert meter.describe()["watts_per_core"] == 7.0
        assert "does not exist" in meter.describe()["fallback_from"]["rapl"]

    def test_explicit_meter_not_present_names_what_was_found(self) -> None:
        with pytest.raises(UnsupportedError) as caught:
            get_meter("nvml", device="cpu")
        message = str(caught.value)
        assert "energy meter 'nvml' is not available" in message
        assert "estimate: available" in message
        assert "rapl:" in message

    def test_explicit_rapl_with_a_tree(self, tmp_path: Path) -> None:
        FakePowercap(tmp_path, {"intel-rapl:0": "package-0"})
        assert get_meter("rapl", root=tmp_path).source == "rapl"
