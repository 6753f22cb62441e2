"""Drop import-time warnings of optional dependencies that no user can act on.

torchao, when installed, is imported by transformers' quantizers the first time any modeling
code is (a model load, lm-evaluation-harness, a size estimate); on a CPU machine it warns that
its CUDA-only extension libraries and Triton are missing, and torch warns about a deprecated
registration torchao makes. None of it says anything about the user's model, and it opened
every search, trial worker and check. :func:`install` (run when ``autoslim`` is imported)
filters exactly those messages on exactly those loggers; everything else they log still shows.

In a Jupyter kernel without ipywidgets, ``import optuna`` (its ``tqdm.auto`` import) warns
``IProgress not found`` about notebook progress bars, which neither autoslim nor its notebook
draws (tqdm falls back to text bars where one is drawn): :func:`install` ignores that one
warning too, for an ``import optuna`` after ``import autoslim``.

A runtime's converter (optimum-intel tracing the model, NNCF compressing it) prints progress
bars and per-layer tables and warns about its tracing on every conversion, in every trial:
:func:`muted` holds that back while it runs (logged at debug level) and lets errors through.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Iterator

HARMLESS = {
    "torchao": re.compile(r"^Failed to load .*\.so"),
    "torchao.kernel.intmm": re.compile(r"Detected no triton"),
    "torch.utils._pytree": re.compile(r"is an Enum subclass and is now natively supported"),
}
# The start of tqdm.notebook's WARN_NOIPYW (a TqdmWarning; matched by text, so that importing
# autoslim does not import tqdm).
NO_IPYWIDGETS = "IProgress not found"


class _Harmless(logging.Filter):
    def __init__(self, pattern: re.Pattern[str]) -> None:
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def install() -> None:
    """Add the filters (once per logger; the warning filter once)."""
    for name, pattern in HARMLESS.items():
        log = logging.getLogger(name)
        if not any(isinstance(f, _Harmless) for f in log.filters):
            log.addFilter(_Harmless(pattern))
    warnings.filterwarnings("ignore", message=re.escape(NO_IPYWIDGETS))


# The loggers of the libraries a conversion runs, quieted to errors while it runs.
CONVERTERS = ("transformers", "optimum", "nncf", "openvino")


@contextlib.contextmanager
def muted() -> Iterator[None]:
    """Run a third-party conversion without its progress bars, tables and warnings: what it
    prints is kept for the debug log, what its loggers say below ERROR is dropped."""
    printed = io.StringIO()
    loggers = [logging.getLogger(name) for name in CONVERTERS]
    levels = [log.level for log in loggers]
    try:
        for log in loggers:
            log.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(printed):
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)
        if printed.getvalue().strip():
            logging.getLogger(__name__).debug("the converter printed:\n%s", printed.getvalue())
