"""A runtime: the engine a built model runs in, is measured in and is exported for.

The operators (``autoslim/operators/``) build a model in PyTorch; a :class:`Runtime` converts
that model into its engine (its own quantization applied there) and hands back a
:class:`RuntimeModel`: logits for token ids, the workload's prefill and greedy decode, its
artifact's size, and ``save`` / :meth:`Runtime.load` of that artifact. The perplexity protocol,
drift, workload timing and energy metering (``autoslim/measure/``) run over a RuntimeModel, so
every engine is scored on the same token ids by the same code.

A runtime is declared once, like an operator: its name, what installs it, the devices it runs
on, its own knobs (active only under it) and what it cannot convert, with the reason. A new one
is one module in this package and one entry in :data:`autoslim.runtimes.RUNTIMES`; the contract
tests in ``tests/runtimes/`` run it over every family and a structural recipe. This module is
torch-free at import, so the CLI's ``--help`` and study-file checks stay light.
"""

from __future__ import annotations

import abc
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from autoslim.errors import UnsupportedError
from autoslim.knobs import Knob

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ConvertInput:
    """What a runtime converts: the built model (fp32 or the recipe's precision, on the CPU
    unless a device was asked for), its tokenizer, the recipe, the calibration windows of the
    KD split (token ids, for data-aware quantization) and the threads inference runs on (0:
    the engine's default). ``source`` is the base model's own file where one exists (a GGUF
    the named model came from), ``workdir`` a private folder the conversion may write to
    and that its RuntimeModel may keep reading from until closed."""

    model: Any
    tokenizer: Any
    recipe: Any
    threads: int
    workdir: Path
    calibration: torch.Tensor | None = None
    source: Mapping[str, Any] = field(default_factory=dict)


class RuntimeModel(abc.ABC):
    """A converted model, ready to run: what measuring and exporting need of an engine."""

    runtime: str  # the name of the Runtime that made it
    threads: int  # inference threads it runs on (0: the engine's default)

    @abc.abstractmethod
    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits ``[batch, tokens, vocab]`` (float32, CPU) for ``input_ids``
        ``[batch, tokens]``, each row scored from its own start, without a cache."""

    @abc.abstractmethod
    def prefill(self, input_ids: torch.Tensor) -> None:
        """Run the forward pass of a batch of windows the way the workload times it."""

    @abc.abstractmethod
    def decode(self, prompt: torch.Tensor, tokens: int) -> None:
        """Generate ``tokens`` tokens greedily after ``prompt`` ``[1, n]``, with a KV cache."""

    @abc.abstractmethod
    def save(self, folder: Path) -> None:
        """Write the runtime's artifact and the tokenizer to the empty folder ``folder``, so
        that :meth:`Runtime.load` (and the engine's own loader) reads it back."""

    @abc.abstractmethod
    def size_bytes(self) -> int:
        """Bytes of the weights as the runtime stores them."""

    @abc.abstractmethod
    def parameters(self) -> int:
        """Logical parameter count (a quantized weight counts as its unquantized shape)."""

    @abc.abstractmethod
    def describe_dtype(self) -> str:
        """The weights' storage types, e.g. ``int8+float32`` or ``Q4_K+Q6_K``."""

    def transformers_model(self) -> Any:
        """The model behind transformers' interface (a forward that returns logits,
        ``generate``): what a notebook generates with, and (a ``PreTrainedModel`` in the torch
        runtime) what task evaluations wrap."""
        raise UnsupportedError(
            f"runtime={self.runtime!r} has no transformers model to run task evaluations on; "
            'evaluate tasks in the torch runtime (search.runtime = ["torch"])'
        )

    def device(self) -> str:
        """Where it computes (``cpu``, ``cuda:0``): what synchronisation and memory use."""
        return "cpu"

    def provenance(self) -> dict[str, Any]:
        """Facts about the engine a figure was measured with (versions, threads, config)."""
        return {"runtime": self.runtime, "threads": self.threads}

    def close(self) -> None:  # noqa: B027 - optional hook: most engines free on collection
        """Free what the engine holds outside Python's reach."""

    def __enter__(self) -> RuntimeModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Runtime(abc.ABC):
    """One engine, declared once.

    ``extra`` is the pip extra that installs it (``pip install 'autoslim[openvino]'``),
    ``modules`` the imports that must succeed, ``devices`` the device types it runs on,
    ``knobs`` its own recipe knobs (each declared with ``active`` requiring this runtime),
    ``unsupported_families`` / ``unsupported_operators`` what it cannot convert, and why.
    """

    name: ClassVar[str]
    doc: ClassVar[str]
    extra: ClassVar[str]
    modules: ClassVar[tuple[str, ...]]
    devices: ClassVar[tuple[str, ...]]
    knobs: ClassVar[tuple[Knob, ...]] = ()
    unsupported_families: ClassVar[Mapping[str, str]] = {}
    unsupported_operators: ClassVar[Mapping[str, str]] = {}
    install_note: ClassVar[str] = ""
    library_name: ClassVar[str] = "transformers"  # the Hub's name for what loads the export
    reloaded_with: ClassVar[str] = ""  # how an export is loaded back to verify it

    def usage(self, folder: str) -> list[str]:
        """Markdown lines of the model card that show how to run an export in ``folder``."""
        return []

    def card_notes(self, provenance: Mapping[str, Any]) -> list[str]:
        """What the model card must say about a measurement made with this engine
        (``provenance``: the RuntimeModel's, as stored), one markdown paragraph each."""
        return []

    def load_line(self, folder: str) -> str:
        """One line that loads an export in ``folder`` (what ``autoslim export`` prints)."""
        return f"{self.name}: {folder}"

    def available(self) -> str | None:
        """None when the engine imports here, else what is missing and the line that installs
        it."""
        missing = [m for m in self.modules if not _importable(m)]
        if not missing:
            return None
        target = f"'autoslim[{self.extra}]'" if self.extra else "autoslim"
        note = f", {self.install_note}" if self.install_note else ""
        return f"{', '.join(missing)} is not installed: pip install {target}{note}"

    def validate(self, recipe: Any, config: Any, device: str) -> None:
        """Refuse, before any work, what this runtime cannot do with ``recipe`` for a model of
        ``config`` on ``device``: not installed, the device, an operator or family it cannot
        carry; then :meth:`check` for its own knobs and shapes."""
        missing = self.available()
        if missing is not None:
            raise UnsupportedError(f"runtime={self.name!r}: {missing}")
        kind = device.split(":", 1)[0]
        if kind not in self.devices:
            raise UnsupportedError(
                f"runtime={self.name!r} on device {device!r}: {self.name} runs on "
                f"{', '.join(self.devices)}; choose another runtime or device"
            )
        family = str(getattr(config, "model_type", ""))
        if family in self.unsupported_families:
            raise UnsupportedError(
                f"runtime={self.name!r} cannot convert {family} models "
                f"({self.unsupported_families[family]})"
            )
        from autoslim.operators import OPERATORS

        for op in OPERATORS:
            if op.name in self.unsupported_operators and op.active(recipe):
                raise UnsupportedError(
                    f"runtime={self.name!r} cannot convert a model changed by {op.name} "
                    f"({self.unsupported_operators[op.name]})"
                )
        self.check(recipe, config, device)

    def with_weight_bits(self, recipe: Any, bits: int) -> Any:
        """``recipe`` with its weights stored in about ``bits`` bits in this runtime (16: as
        built): the starting points a study enqueues, and what the contract tests compare."""
        return recipe.replace(bits=bits)

    def describe(self, recipe: Any) -> str:
        """What this runtime does with ``recipe``, for its one-line summary ("" for nothing)."""
        return self.name

    def check(self, recipe: Any, config: Any, device: str) -> None:  # noqa: B027 - optional
        """Refuse a knob setting or layer shape this engine cannot quantize or run."""

    @abc.abstractmethod
    def convert(self, source: ConvertInput) -> RuntimeModel:
        """The built model converted into this engine, with the recipe's quantization."""

    @abc.abstractmethod
    def load(
        self, folder: Path, *, recipe: Any, threads: int, device: str = "cpu"
    ) -> RuntimeModel:
        """A RuntimeModel read back from what :meth:`RuntimeModel.save` wrote for ``recipe``
        (whose settings, such as the precision an engine computes in, it runs with)."""


def _importable(module: str) -> bool:
    """Whether ``module`` is installed, without importing it (its parent package is imported
    for a dotted name)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package is missing
        return False
