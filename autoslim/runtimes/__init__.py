"""The engines a built model is converted into, measured in and exported for, declared once.

``RUNTIMES`` holds one :class:`~autoslim.runtimes.base.Runtime` per engine, in the order a study
lists them; ``RUNTIME_KNOB`` is the recipe's ``runtime`` knob, declared first of all knobs so the
others may depend on it (a runtime's own knobs, and the torch quantization backends, are active
only under their runtime). Torch-free at import. A new engine is one module here and one entry
in :func:`_runtimes`.
"""

from __future__ import annotations

from autoslim.errors import UnsupportedError
from autoslim.knobs import Knob
from autoslim.runtimes.base import ConvertInput, Runtime, RuntimeModel

__all__ = [
    "RUNTIMES",
    "RUNTIME_KNOB",
    "ConvertInput",
    "Runtime",
    "RuntimeModel",
    "get_runtime",
    "installed",
]


def _runtimes() -> dict[str, Runtime]:
    from autoslim.runtimes import llamacpp, openvino, pytorch

    return {r.name: r for r in (pytorch.RUNTIME, openvino.RUNTIME, llamacpp.RUNTIME)}


RUNTIMES: dict[str, Runtime] = _runtimes()


def get_runtime(name: str) -> Runtime:
    try:
        return RUNTIMES[name]
    except KeyError:
        raise UnsupportedError(
            f"runtime={name!r}: autoslim knows {', '.join(map(repr, RUNTIMES))}"
        ) from None


def installed(device: str) -> list[str]:
    """The runtimes that are installed here and run on ``device``, in declaration order."""
    kind = device.split(":", 1)[0]
    return [
        name
        for name, runtime in RUNTIMES.items()
        if kind in runtime.devices and runtime.available() is None
    ]


RUNTIME_KNOB = Knob(
    "runtime",
    str,
    "torch",
    "the engine the model is converted into, measured in and exported for; left out of "
    "[search]: every runtime installed here that runs on the device",
    choices=tuple(RUNTIMES),
    search=installed,
)
