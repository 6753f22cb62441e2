"""The CPU classes autoslim must run on, as ``/proc/cpuinfo`` flags, to fake one in tests.

The precisions a CPU computes natively follow from these flags
(:func:`autoslim.operators.precisions.supported`), and so do the bundled studies' search spaces
and every check that refuses an emulated precision. Tests run what depends on them once per
class with :func:`fake_cpu`, whatever CPU the suite happens to run on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from autoslim import precisions

_AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c"})
_AVX512 = _AVX2 | {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}

CPU_CLASSES: dict[str, frozenset[str]] = {
    # AMD Zen 2/3, Intel before Skylake-SP, most laptops
    "avx2": _AVX2,
    # Intel Xeon Skylake-SP to Ice Lake: AVX512 and VNNI, no bf16
    "avx512": _AVX512,
    # AMD EPYC Zen 4/5: AVX512-BF16, no AMX, no AVX512-FP16
    "avx512_bf16": _AVX512 | {"avx512_bf16"},
    # Intel Xeon Sapphire Rapids and later: AMX tiles, bf16 and fp16
    "amx": _AVX512 | {"avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8", "amx_tile"},
}


@contextmanager
def fake_cpu(name: str) -> Iterator[frozenset[str]]:
    """Make autoslim, and the processes it starts, see the CPU class ``name``."""
    flags = CPU_CLASSES[name]
    before = os.environ.get(precisions.CPU_FLAGS_ENV)
    os.environ[precisions.CPU_FLAGS_ENV] = ",".join(sorted(flags))
    precisions._cpu_flags.cache_clear()
    try:
        yield flags
    finally:
        if before is None:
            os.environ.pop(precisions.CPU_FLAGS_ENV, None)
        else:
            os.environ[precisions.CPU_FLAGS_ENV] = before
        precisions._cpu_flags.cache_clear()
