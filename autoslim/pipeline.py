"""The one pipeline: load the base → build a recipe (the operators, in torch) → convert it into
its runtime → measure it there.

The trial worker, ``autoslim measure``, ``export``, ``pick --retime`` and the cost model all go
through :class:`Pipeline`; none of them sequences these steps itself. A caller may give a recipe
up between the steps (the worker's early abort and budgets) through the hooks of
:meth:`Pipeline.built`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoslim import progress
from autoslim.errors import AutoslimError, ModelError
from autoslim.recipe import Recipe
from autoslim.runtimes import ConvertInput, RuntimeModel, get_runtime
from autoslim.scratch import scratch_folder

logger = logging.getLogger(__name__)

WORKDIR_PREFIX = "autoslim-convert-"


class ConversionError(AutoslimError):
    """A runtime could not convert a built model (an exporter's error, in one line)."""


@dataclass
class Built:
    """A recipe built and converted: its runtime model, and what the build recorded (seconds
    per stage, ``convert`` included; the facts about what changed)."""

    model: RuntimeModel
    stage_seconds: dict[str, float]
    info: dict[str, Any]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


class Pipeline:
    """What every recipe of one study is built from: the base model, the corpus, the seed, the
    device, the workload, and what trials share (the teacher cache, the calibration windows)."""

    def __init__(
        self,
        base: Any,
        corpus: Any,
        workload: Any,
        *,
        seed: int = 0,
        device: str = "cpu",
        teacher_cache: Any = None,
        calibration: Any = None,
    ) -> None:
        self.base = base
        self.corpus = corpus
        self.workload = workload
        self.seed = seed
        self.device = device
        self.teacher_cache = teacher_cache
        self.calibration = calibration

    @classmethod
    def load(
        cls,
        model: str,
        *,
        precision: str,
        workload: Any,
        text: list[str] | None = None,
        dataset: str | None = None,
        device: str = "cpu",
        seed: int = 0,
        trust_remote_code: bool = False,
        fingerprint: str | None = None,
    ) -> Pipeline:
        """Load the base model in ``precision`` and the corpus; ``fingerprint``: the corpus a
        study measured on, refused when the text here differs."""
        from autoslim import data, models
        from autoslim.errors import DataError
        from autoslim.precisions import torch_dtype

        corpus = data.load_corpus(text=text or None, dataset=dataset or None)
        if fingerprint is not None and corpus.fingerprint != fingerprint:
            raise DataError(
                f"corpus {corpus.name!r} has fingerprint {corpus.fingerprint} here, but the "
                f"study was measured on {fingerprint}: the text changed (another Python "
                "version's stdlib, edited files), so perplexities would not match; run this "
                "where the search ran, with the same data"
            )
        base = models.load_model(
            model, device=device, dtype=torch_dtype(precision), trust_remote_code=trust_remote_code
        )
        return cls(base, corpus, workload, seed=seed, device=device)

    @classmethod
    def for_study(cls, study: Any, config: Any) -> Pipeline:
        """The pipeline a study's trials were built with (its model, base precision, data,
        seed, device and workload), for rebuilding them (export, re-timing)."""
        from autoslim.measure import Workload

        attrs = study.user_attrs
        return cls.load(
            str(attrs.get("model", config.model.name)),
            precision=str(attrs.get("base_precision", "fp32")),
            workload=Workload.from_dict(config.workload),
            text=list(config.data.text),
            dataset=config.data.dataset,
            device=config.model.device,
            seed=int(attrs.get("seed", config.study.seed)),
            trust_remote_code=config.model.trust_remote_code,
            fingerprint=attrs.get("corpus_fingerprint"),
        )

    def eval_ids(self) -> Any:
        from autoslim import data

        return data.tokens(self.base.tokenizer, self.corpus, "eval")

    def calibration_windows(self) -> Any:
        """The calibration windows of the KD split (shared by activation-aware cuts and
        data-aware quantization), made once."""
        if self.calibration is None:
            from autoslim.compress.calibration import calibration_batch, context_window

            self.calibration = calibration_batch(
                self.base.tokenizer,
                self.corpus,
                window=context_window(self.base.model.config),
                seed=self.seed,
            )
        return self.calibration

    def validate(self, recipe: Recipe) -> None:
        """Refuse, before any work, a recipe this model, machine or runtime cannot take."""
        from autoslim.build import validate

        validate(recipe, self.base.model.config, self.device)

    @contextmanager
    def built(
        self,
        recipe: Recipe,
        *,
        check: Callable[[str, Any], None] | None = None,
        before_convert: Callable[[Any], None] | None = None,
    ) -> Iterator[Built]:
        """Build ``recipe`` and convert it into its runtime; the converted model is closed and
        its conversion folder removed on exit. ``check(stages, model)`` runs after the cheap
        stages (``build.build``), ``before_convert(torch_model)`` after the build; either
        may raise to give the recipe up."""
        from autoslim.build import build, needs_calibration

        result = build(
            self.base,
            recipe,
            corpus=self.corpus,
            seed=self.seed,
            teacher_cache=self.teacher_cache,
            calibration=self.calibration_windows() if needs_calibration(recipe) else None,
            check=check,
            device=self.device,
        )
        result.model.eval()
        if before_convert is not None:
            before_convert(result.model)
        with self.converted(result.model, recipe) as (model, seconds):
            yield Built(
                model=model,
                stage_seconds={**result.stage_seconds, "convert": seconds},
                info=result.info,
            )

    @contextmanager
    def converted(self, model: Any, recipe: Recipe) -> Iterator[tuple[RuntimeModel, float]]:
        """``model`` (a built torch model) converted into ``recipe``'s runtime, and the seconds
        that took; the conversion folder is removed on exit."""
        runtime = get_runtime(recipe.runtime)
        calibration = None if recipe.runtime == "torch" else self.calibration_windows()
        with scratch_folder(WORKDIR_PREFIX) as workdir:
            progress.report("convert")
            started = time.perf_counter()
            try:
                converted = runtime.convert(
                    ConvertInput(
                        model=model,
                        tokenizer=self.base.tokenizer,
                        recipe=recipe,
                        threads=self.workload.threads,
                        workdir=workdir,
                        calibration=calibration,
                        source=self._source(),
                    )
                )
            except (AutoslimError, MemoryError, KeyboardInterrupt):
                raise
            except Exception as e:  # an exporter's own error: one line, the trial FAILs
                raise ConversionError(
                    f"runtime={recipe.runtime!r} could not convert '{recipe.describe()}' "
                    f"({_first_line(e)})"
                ) from e
            seconds = time.perf_counter() - started
            try:
                yield converted, seconds
            finally:
                converted.close()

    def _source(self) -> dict[str, Any]:
        """The file the base model was converted from (a GGUF), where it was."""
        from autoslim import gguf

        return dict(gguf.source(self.base.path) or {}) if self.base.path else {}

    def measure(self, model: RuntimeModel, *, meter: Any = "auto", teacher: bool = True) -> Any:
        """Every figure of ``model`` under the workload, drift against the base model."""
        from autoslim.measure import measure

        self.workload.check_context(self.base.model.config)
        return measure(
            model,
            self.base.tokenizer,
            self.corpus,
            self.workload,
            teacher=self.base.model if teacher else None,
            meter=meter,
            device=self.device,
        )

    def reload(self, folder: Path, recipe: Recipe) -> RuntimeModel:
        """What a runtime saved for ``recipe`` in ``folder``, loaded back by that runtime."""
        try:
            return get_runtime(recipe.runtime).load(
                folder, recipe=recipe, threads=self.workload.threads, device=self.device
            )
        except (AutoslimError, MemoryError, KeyboardInterrupt):
            raise
        except Exception as e:
            raise ModelError(
                f"the saved {recipe.runtime} model in {folder} does not load back "
                f"({_first_line(e)}); this recipe cannot be exported yet"
            ) from e
