"""Running task evaluations on a model already in memory (the trial's, never a saved copy).

lm-evaluation-harness tasks run through its ``HFLM`` wrapping the model and tokenizer and
``evaluator.evaluate`` over a task dict loaded once per worker (a local ``include_path``
folder is indexed alone, and its ``data_files`` are relative to that folder). A user
function is imported from its file on first use and called ``function(model, tokenizer)``;
it must return ``{metric: number}``. Every result is a :class:`TaskResult`: the metric, its
value, the harness's stderr, the task version and the number of examples.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from autoslim.errors import ConfigError
from autoslim.tasks.spec import TaskSpec

DEFAULT_METRIC = "acc"


class TaskFailed(Exception):
    """A task evaluation could not produce a finite score (the trial FAILs with it)."""


@dataclass(frozen=True)
class TaskResult:
    metric: str
    value: float
    stderr: float | None
    version: str
    n: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def _inside(folder: str) -> Iterator[None]:
    """Work inside ``folder`` (the harness resolves a local task's data files from the
    working directory)."""
    if not folder:
        yield
        return
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def load_harness_task(spec: TaskSpec) -> Any:
    """The harness's task dict for ``spec`` (data loaded); ConfigError when the task is
    unknown or its data cannot be reached."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "0"))
    try:
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise ConfigError(
            f"tasks.{spec.name}.harness: lm-evaluation-harness is not installed; "
            "pip install 'autoslim[tasks]' (or lm-eval)"
        ) from e
    where = spec.include_path
    manager = TaskManager(include_path=where or None, include_defaults=not where)
    if spec.harness not in manager.all_tasks:
        place = f"the task folder {where}" if where else "lm-evaluation-harness"
        raise ConfigError(
            f"tasks.{spec.name}.harness: {spec.harness!r} is not a task of {place}; check the "
            "name (`lm_eval ls tasks`) or the include_path"
        )
    try:
        with _inside(where):
            return manager.load([spec.harness])
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise ConfigError(
            f"tasks.{spec.name}: the data of {spec.harness!r} cannot be reached "
            f"({type(e).__name__}: {first[:200]}); offline, copy it to a local JSON file and "
            "point a task YAML at it (dataset_path: json, as studies/tasks/pydoc_mc does), "
            "then set include_path"
        ) from e


def _harness_result(spec: TaskSpec, results: Mapping[str, Any], seconds: float) -> TaskResult:
    scores = results["results"][spec.harness]
    metric = spec.metric or DEFAULT_METRIC
    key = next((k for k in scores if k.split(",")[0] == metric), None)
    if key is None:
        known = sorted({k.split(",")[0] for k in scores if "_stderr" not in k} - {"alias"})
        raise TaskFailed(
            f"task {spec.name}: {spec.harness} reports no metric {metric!r} (it has "
            f"{', '.join(known)}); set tasks.{spec.name}.metric"
        )
    stderr_key = key.replace(",", "_stderr,", 1)
    stderr = scores.get(stderr_key)
    counts = results.get("n-samples", {}).get(spec.harness, {})
    return TaskResult(
        metric=metric,
        value=float(scores[key]),
        stderr=float(stderr) if isinstance(stderr, int | float) else None,
        version=str(results.get("versions", {}).get(spec.harness, "")),
        n=int(counts.get("effective", 0)),
        seconds=seconds,
    )


def check_reachable(tasks: dict[str, TaskSpec]) -> None:
    """Load every harness task (its data too), so an unknown name or data that cannot be
    reached offline is a ConfigError naming the task before any trial runs."""
    for spec in tasks.values():
        if spec.harness:
            load_harness_task(spec)


def _import_function(spec: TaskSpec) -> Callable[..., Any]:
    path, _, attribute = spec.function.rpartition(":")
    module_name = f"autoslim_user_task_{spec.name}"
    try:
        loader = importlib.util.spec_from_file_location(module_name, path)
        if loader is None or loader.loader is None:
            raise ImportError(f"cannot load {path}")
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
        function = getattr(module, attribute)
    except Exception as e:
        raise TaskFailed(
            f"task {spec.name}: cannot import {spec.function} ({type(e).__name__}: {e})"
        ) from e
    if not callable(function):
        raise TaskFailed(f"task {spec.name}: {spec.function} is not callable")
    return function  # type: ignore[no-any-return]


def _function_result(spec: TaskSpec, returned: Any, seconds: float) -> TaskResult:
    if not isinstance(returned, Mapping) or not returned:
        raise TaskFailed(
            f"task {spec.name}: {spec.function} returned {type(returned).__name__}, not a "
            "non-empty dict of metric -> number"
        )
    metric = spec.metric or (next(iter(returned)) if len(returned) == 1 else "")
    if metric not in returned:
        raise TaskFailed(
            f"task {spec.name}: {spec.function} returned {', '.join(map(str, returned))}; set "
            f"tasks.{spec.name}.metric to one of them"
        )
    try:
        value = float(returned[metric])
    except (TypeError, ValueError) as e:
        raise TaskFailed(f"task {spec.name}: {metric}={returned[metric]!r} is not a number") from e
    return TaskResult(metric, value, None, "user function", 0, seconds)


class TaskEvaluator:
    """The tasks of a study, loaded once (in the worker) and run on any model."""

    def __init__(self, specs: Mapping[str, TaskSpec], device: str) -> None:
        logging.getLogger("lm_eval").setLevel(logging.ERROR)  # per-call chatter
        self.specs = dict(specs)
        self.device = device
        self.harness = {n: load_harness_task(s) for n, s in self.specs.items() if s.harness}
        self.functions: dict[str, Callable[..., Any]] = {}

    def evaluate(self, model: Any, tokenizer: Any) -> dict[str, TaskResult]:
        """Every task's result on ``model``; TaskFailed names the first that fails."""
        out = {}
        for name, spec in self.specs.items():
            started = time.perf_counter()
            if spec.harness:
                result = _harness_result(
                    spec, self._run_harness(spec, model, tokenizer), time.perf_counter() - started
                )
            else:
                if name not in self.functions:
                    self.functions[name] = _import_function(spec)
                returned = self.functions[name](model, tokenizer)
                result = _function_result(spec, returned, time.perf_counter() - started)
            if not math.isfinite(result.value):
                raise TaskFailed(f"task {name}: {result.metric}={result.value} is not finite")
            out[name] = result
        return out

    def _run_harness(self, spec: TaskSpec, model: Any, tokenizer: Any) -> Any:
        from lm_eval import evaluator
        from lm_eval.models.huggingface import HFLM

        was_training = model.training
        model.eval()
        try:
            lm = HFLM(
                pretrained=model,
                tokenizer=tokenizer,
                batch_size=spec.batch_size,
                device=str(next(model.parameters()).device),
            )
            tasks = self.harness[spec.name]
            for task in _leaves(tasks):
                task.set_config(key="num_fewshot", value=spec.num_fewshot)
            return evaluator.evaluate(
                lm, tasks, limit=spec.limit, bootstrap_iters=100, log_samples=False
            )
        finally:
            model.train(was_training)


def _leaves(tasks: Any) -> list[Any]:
    out = []
    for value in tasks.values():
        out.extend(_leaves(value) if isinstance(value, dict) else [value])
    return out
