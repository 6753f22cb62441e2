from __future__ import annotations

import mmap

import pytest
import torch

from autoslim import memory
from autoslim.measure.footprint import PeakMemory


@pytest.mark.skipif(not memory.PROC_CLEAR_REFS.exists(), reason="needs Linux VmHWM")
def test_a_trial_peak_survives_a_measurement_window_reset() -> None:
    memory.mark_trial("cpu")
    # 64 MiB touched, as distillation would before measuring. An anonymous mapping, not a
    # tensor: closing it returns its pages at once, where a freed tensor may stay resident in
    # the allocator's heap after a long run of other tests.
    big = mmap.mmap(-1, 64 * 2**20)
    for offset in range(0, len(big), mmap.PAGESIZE):
        big[offset] = 1
    peak_with_big = memory.trial_peak_bytes("cpu")
    big.close()
    window = PeakMemory(torch.device("cpu"))
    window.start()  # the workload window resets the counter...
    trial_peak = memory.trial_peak_bytes("cpu")  # ...but not the trial's peak
    assert trial_peak is not None and peak_with_big is not None
    assert window.peak_bytes() < trial_peak - 32 * 2**20
    # the kernel syncs its RSS counters in batches: equal up to a few pages
    assert trial_peak >= peak_with_big - 2**20


@pytest.mark.skipif(not memory.PROC_STATM.exists(), reason="needs Linux /proc")
def test_freed_tensors_leave_the_worker_resident_memory_after_release() -> None:
    # A distillation's gradients and optimizer state: many mid-size blocks, mostly freed
    # at the end of the trial while a few survive between them (the kept model).
    blocks = [torch.ones(64, 1000 + i % 7) for i in range(3000)]  # ≈ 0.8 GB
    kept = blocks[::100]
    del blocks
    held = memory.rss_bytes()
    if not memory.release_freed():
        pytest.skip("the C library has no malloc_trim")
    released = memory.rss_bytes()
    assert held - released > 400 * 2**20, (held, released)
    assert all(float(t[0, 0]) == 1.0 for t in kept)


@pytest.mark.skipif(not memory.PROC_CLEAR_REFS.exists(), reason="needs Linux VmHWM")
def test_a_measurement_window_does_not_count_what_an_earlier_stage_freed() -> None:
    blocks = [torch.ones(64, 1000 + i % 7) for i in range(3000)]  # a distillation's ≈ 0.8 GB
    held = memory.rss_bytes()
    del blocks
    window = PeakMemory(torch.device("cpu"))
    window.start()
    assert window.peak_bytes() < held - 400 * 2**20, (window.peak_bytes(), held)
