"""The precisions (fp32, bf16, fp16): their torch dtypes, and where each computes natively.

A precision is offered
only where the device computes it natively: bf16 on CUDA with bf16 support or a CPU with
AVX512-BF16 / AMX-BF16 (on this project's Xeon a bf16 forward of the reference model ran
2.6-3.0x faster than fp32), fp16 on CUDA or a CPU with AVX512-FP16 / AMX-FP16. Elsewhere the
arithmetic would be emulated, slower than fp32, so it is refused with the reason.

``AUTOSLIM_CPU_FLAGS`` (comma- or space-separated ``/proc/cpuinfo`` flags) replaces what this
CPU reports: to write or check a study for another class of CPU than the one at hand, or to
keep bf16 out of a machine's default space.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from autoslim.errors import UnsupportedError

PRECISIONS = ("fp32", "bf16", "fp16")
_TORCH_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
_CPU_FLAGS = {"bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("avx512_fp16", "amx_fp16")}


def torch_dtype(precision: str) -> Any:
    import torch

    return getattr(torch, _TORCH_NAMES[precision])


def precision_of(dtype: Any) -> str:
    """``torch.bfloat16`` → ``"bf16"``; any other float dtype is fp32."""
    name = str(dtype).removeprefix("torch.")
    return next((p for p, n in _TORCH_NAMES.items() if n == name), "fp32")


CPU_FLAGS_ENV = "AUTOSLIM_CPU_FLAGS"


@functools.cache
def proc_cpu_flags() -> frozenset[str]:
    """The flags this CPU reports in ``/proc/cpuinfo`` (none where it has none), whatever
    ``AUTOSLIM_CPU_FLAGS`` pretends: what decides whether an instruction can run here."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def _cpu_flags() -> frozenset[str]:
    override = os.environ.get(CPU_FLAGS_ENV)
    if override is not None:
        return frozenset(override.replace(",", " ").split())
    return proc_cpu_flags()


def why_not(precision: str, device: str) -> str | None:
    """None when ``device`` computes ``precision`` natively, else the reason it does not."""
    if precision == "fp32":
        return None
    kind = device.split(":", 1)[0]
    if kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            return "CUDA is not available here"
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            return "this GPU has no bf16 support (pre-Ampere); use fp16"
        return None
    if kind == "cpu":
        flags = _CPU_FLAGS[precision]
        if _cpu_flags() & set(flags):
            return None
        return (
            f"this CPU has none of {', '.join(flags)}, so {precision} would be emulated and "
            "slower than fp32"
        )
    return f"autoslim has not measured {precision} on {kind!r}"


def supported(device: str) -> list[str]:
    """The precisions ``device`` computes natively, fp32 first."""
    return [p for p in PRECISIONS if why_not(p, device) is None]


def resolve(setting: str, stored: str, device: str) -> str:
    """The precision a base model is loaded and measured in for ``[model] dtype``.

    ``auto``: a model stored in 16 bits runs in the 16-bit type the device computes best (bf16
    first, then fp16), a model stored in fp32 stays fp32; an explicit setting must be supported.
    """
    if setting != "auto":
        reason = why_not(setting, device)
        if reason:
            raise UnsupportedError(f"model.dtype={setting!r} on {device}: {reason}")
        return setting
    if stored == "fp32":
        return "fp32"
    native = [p for p in ("bf16", "fp16") if why_not(p, device) is None]
    return native[0] if native else "fp32"
