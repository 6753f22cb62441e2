"""Trial isolation: every trial runs in a reused child process, recycled after any failure.

The study process never imports a model. A worker process (``multiprocessing`` spawn, so no
CUDA state or threads are inherited) builds its objective once (base model, corpus, teacher
cache), then serves recipes one at a time over a pipe. A trial that raises, produces a
non-finite value, crashes the process (segfault, the kernel's OOM killer) or hangs past the
per-trial timeout is recorded as a failure and the worker is replaced; the study goes on. The
timeout runs on the trial's own clock (:class:`autoslim.search.costs.TrialClock`: time spent
waiting for a CPU on a busy machine does not count, a hang does). While a trial runs, the worker
forwards its stage and step (:mod:`autoslim.progress`), as it does during its setup, and the
study process passes the latest on at least every ``progress.SHOW_SECONDS``.
Workers are also recycled every ``recycle_every`` trials so memory cannot creep, and a worker
whose study process dies (``kill -9``) exits on its own. Under ``[model] max_memory`` the
study process reads the worker's resident memory twice a second and stops a trial that holds
more, before the kernel's out-of-memory killer picks a process of its own choosing.

The objective is named by ``"module:attribute"``: a callable taking the StudyConfig and
returning an :class:`Objective`. The product uses :class:`BuildAndMeasure`; tests inject fakes
from :mod:`tests.study.fakes` to exercise the failure paths with real processes.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
import math
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Any, Protocol

from autoslim import errors, memory, progress
from autoslim.recipe import Recipe
from autoslim.search.budgets import Limit, format_bytes
from autoslim.search.config import StudyConfig, base_recipe
from autoslim.search.costs import MAX_STRETCH, TrialClock

logger = logging.getLogger(__name__)

DEFAULT_OBJECTIVE = "autoslim.search.worker:BuildAndMeasure"


class Objective(Protocol):
    """What a worker runs: ``info`` describes the setup, a call evaluates one recipe.

    A call returns ``{"measurement": {...}, "build": {...}}`` (JSON only; ``"tasks"`` and
    ``"tasks_skipped"`` too when the study has tasks) or raises :class:`TrialAbandoned` to
    give a recipe up early. ``limits`` are the study's constraints the trial must meet (none
    for the base model): the objective may abandon a recipe that misses one early, and skips
    task evaluations on a recipe that already misses a cheaper one.
    """

    info: dict[str, Any]

    def __call__(self, recipe: Recipe, limits: Sequence[Limit] = ()) -> dict[str, Any]: ...


class TrialAbandoned(Exception):
    """Raised by an objective to give a recipe up early (recorded as a pruned trial)."""

    def __init__(self, reason: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.details = details or {}


@dataclass
class TrialResult:
    """The outcome of one recipe in a worker.

    ``status`` is ``done``, ``abandoned``, ``error`` (the objective raised), ``crashed`` (the
    worker process died) or ``timeout``. ``seconds`` is the objective's own time in the worker;
    ``wall_seconds`` the time seen by the study process (the difference is the isolation
    overhead).
    """

    status: str
    payload: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    seconds: float = 0.0
    wall_seconds: float = 0.0
    worker: dict[str, Any] = field(default_factory=dict)


def _resolve(path: str) -> Any:
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def _exit_when_orphaned(parent_pid: int) -> None:
    while True:
        if os.getppid() != parent_pid:
            os._exit(3)
        time.sleep(1.0)


def _describe(e: BaseException) -> str:
    message = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {message}" if message else type(e).__name__


def _serve(conn: Connection, config: StudyConfig, objective_path: str, parent_pid: int) -> None:
    """The worker process's main loop."""
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    # The worker's stderr is the user's terminal: keep per-call library chatter off it.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    # bitsandbytes logs a cast warning on every int8 matmul on CPU.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    started = time.perf_counter()
    progress.listen(lambda p: conn.send(("progress", p.to_dict())))
    try:
        objective = _resolve(objective_path)(config)
    except BaseException as e:
        conn.send(("setup_error", type(e).__name__, _describe(e), traceback.format_exc()))
        return
    info = dict(objective.info)
    info["setup_seconds"] = time.perf_counter() - started
    conn.send(("ready", info))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message[0] == "stop":
            return
        recipe = Recipe.from_params(message[1])
        device = config.model.device
        if device == "cuda":
            device = "cuda:0"
        memory.mark_trial(device)
        started = time.perf_counter()
        try:
            payload = objective(recipe, message[2])
            reply: tuple[Any, ...] = ("done", payload, "")
        except TrialAbandoned as e:
            reply = ("abandoned", e.details, e.reason)
        except BaseException as e:
            logger.debug("trial raised\n%s", traceback.format_exc())
            reply = ("error", {}, _describe(e))
        seconds = time.perf_counter() - started
        gc.collect()
        memory.release_freed()
        usage = {
            "pid": os.getpid(),
            "rss_bytes": memory.rss_bytes(),
            "peak_memory_bytes": memory.trial_peak_bytes(device),
        }
        conn.send((*reply, seconds, usage))
        if reply[0] == "error":
            return


class Worker:
    """A recyclable worker process evaluating recipes for one study configuration."""

    def __init__(
        self, config: StudyConfig, objective: str = DEFAULT_OBJECTIVE, *, start_timeout: float
    ) -> None:
        self.config = config
        self.objective = objective
        self.start_timeout = start_timeout
        self.info: dict[str, Any] = {}
        self.starts = 0
        self.trials_served = 0
        self._process: Any = None
        self._conn: Connection | None = None
        self.own_seconds = 0.0  # the last trial's seconds on its own clock
        self.held_over_limit = 0  # the resident bytes at which the last wait was stopped

    @property
    def pid(self) -> int | None:
        """The worker process's id while it runs."""
        return None if self._process is None else int(self._process.pid)

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def start(
        self, on_progress: Callable[[progress.TrialProgress], None] | None = None
    ) -> dict[str, Any]:
        """Start the process and wait for its objective to be ready (its setup's stages go to
        ``on_progress``, as a trial's do in :meth:`run`); returns its info."""
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        process = context.Process(
            target=_serve,
            args=(child, self.config, self.objective, os.getpid()),
            name="autoslim-worker",
            daemon=True,
        )
        process.start()
        child.close()
        self._process, self._conn = process, parent
        self.starts += 1
        self.trials_served = 0
        message = self._receive(self.start_timeout, on_progress)
        if message is not None and message[0] == "ready" and self._over_limit():
            message = None
        if message is None or message[0] != "ready":
            death = self._death()
            self.close()
            if self.held_over_limit:
                raise errors.AutoslimError(
                    f"the trial worker held {format_bytes(self.held_over_limit)} while it "
                    "loaded the base model and its teacher cache, more than model.max_memory "
                    f"= {format_bytes(self.config.model.max_memory or 0)}, before any trial; "
                    "raise model.max_memory"
                )
            if message is not None and message[0] == "setup_error":
                kind = getattr(errors, message[1], None)
                cls = (
                    kind
                    if isinstance(kind, type) and issubclass(kind, errors.AutoslimError)
                    else None
                )
                text = f"the trial worker could not set up the objective: {message[2]}"
                if cls is not None:
                    raise cls(text)
                raise errors.AutoslimError(f"{text}\n{message[3]}")
            raise errors.AutoslimError(
                f"the trial worker did not start within {self.start_timeout:.0f} s; it {death}"
            )
        self.info = message[1]
        logger.info("worker %d ready in %.1f s", process.pid, self.info["setup_seconds"])
        return self.info

    def _receive(
        self, timeout: float, on_progress: Callable[[progress.TrialProgress], None] | None = None
    ) -> tuple[Any, ...] | None:
        """The next result message, or None if the process died or ``timeout`` passed on its
        own clock (or ``MAX_STRETCH`` × ``timeout`` of wall time). Progress messages go to
        ``on_progress``; the latest is repeated there every ``progress.SHOW_SECONDS``. Also
        None, with the process killed and ``held_over_limit`` set, when it holds more
        resident memory than ``model.max_memory``."""
        assert self._conn is not None and self._process is not None
        clock = TrialClock(self._process.pid)
        latest = progress.TrialProgress("starting")
        shown = time.monotonic()
        self.held_over_limit = 0
        while True:
            own, wall = clock.read()
            if own >= timeout or wall >= MAX_STRETCH * timeout or self._over_limit():
                self.own_seconds = own
                return None
            if on_progress is not None and time.monotonic() - shown >= progress.SHOW_SECONDS:
                on_progress(latest)
                shown = time.monotonic()
            try:
                if self._conn.poll(min(timeout - own, 0.5)):
                    message: tuple[Any, ...] = self._conn.recv()
                    if message[0] != "progress":
                        self.own_seconds = clock.read()[0]
                        return message
                    latest = progress.TrialProgress(**message[1])
                    if on_progress is not None:
                        on_progress(latest)
                        shown = time.monotonic()
                    continue
            except (EOFError, OSError):
                return None
            if not self._process.is_alive() and not self._conn.poll(0):
                return None

    def _over_limit(self) -> bool:
        """Whether the process holds more resident memory than ``model.max_memory``; if so it
        is killed, with what it held in ``held_over_limit``."""
        limit = self.config.model.max_memory
        if limit is None or self._process is None:
            return False
        held = memory.rss_bytes(self._process.pid)
        if held <= limit:
            return False
        self.held_over_limit = held
        self._process.kill()
        return True

    def _death(self) -> str:
        if self._process is not None:
            self._process.join(2)  # the pipe closes a moment before the exit status exists
        if self._process is None or self._process.exitcode is None:
            return "did not answer"
        code = self._process.exitcode
        if code < 0:
            name = signal.Signals(-code).name
            hint = " (often the kernel's out-of-memory killer)" if name == "SIGKILL" else ""
            return f"died from {name}{hint}"
        return f"exited with status {code}"

    def run(
        self,
        recipe: Recipe,
        timeout: float,
        limits: Sequence[Limit] = (),
        on_progress: Callable[[progress.TrialProgress], None] | None = None,
    ) -> TrialResult:
        """Evaluate one recipe under ``limits`` within ``timeout`` seconds of its own clock;
        never raises for a trial's own failure."""
        if not self.alive:
            self.start()
        assert self._conn is not None
        started = time.perf_counter()
        self.own_seconds = 0.0
        self._conn.send(("run", recipe.to_params(), list(limits)))
        message = self._receive(timeout, on_progress)
        wall = time.perf_counter() - started
        if message is None:
            death = self._death()
            self.close()
            if self.held_over_limit:
                return TrialResult(
                    "over_memory",
                    reason=_over_memory_reason(
                        recipe, self.held_over_limit, self.config.model.max_memory or 0
                    ),
                    wall_seconds=wall,
                )
            if self.own_seconds >= timeout or wall >= MAX_STRETCH * timeout:
                waited = wall - self.own_seconds
                return TrialResult(
                    "timeout",
                    reason=f"TrialTimeout: no result after {self.own_seconds:.0f} s of its "
                    f"own time ({wall:.0f} s wall, {waited:.0f} s of it waiting for a CPU), "
                    f"limit {timeout:.0f} s (study.trial_timeout_seconds, or derived from "
                    "the cost model); the worker process was killed",
                    wall_seconds=wall,
                )
            return TrialResult(
                "crashed",
                reason=f"WorkerCrashed: the trial process {death}",
                wall_seconds=wall,
            )
        status, payload, reason, seconds, worker = message
        worker = {**worker, "own_seconds": self.own_seconds, "timeout_seconds": timeout}
        self.trials_served += 1
        result = TrialResult(status, payload, reason, seconds, wall, worker)
        recycle = self.config.study.recycle_every
        if status == "error" or (recycle and self.trials_served >= recycle):
            self.close()
        return result

    def close(self) -> None:
        """Stop the process (politely, then by force)."""
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if process is None:
            return
        if process.is_alive() and conn is not None:
            with contextlib.suppress(OSError):
                conn.send(("stop",))
            process.join(5)
        if process.is_alive():
            process.kill()
            process.join(5)
        if conn is not None:
            conn.close()


def _over_memory_reason(recipe: Recipe, held: int, limit: int) -> str:
    savers = []
    if recipe.kd_steps and recipe.kd_optimizer == "adamw":
        savers.append("kd_optimizer = 'adamw8bit' (2 instead of 8 bytes of state a parameter)")
    if recipe.kd_steps and not recipe.kd_checkpointing:
        savers.append("kd_checkpointing = true (activations recomputed, not kept)")
    hint = f"; for distillation, {' and '.join(savers)} hold less" if savers else ""
    return (
        f"MemoryLimit: the trial worker held {format_bytes(held)}, more than model.max_memory "
        f"= {format_bytes(limit)}; the worker process was stopped{hint}"
    )


class BuildAndMeasure:
    """The product objective: ``build`` the recipe, then ``measure`` the result.

    Loaded once per worker: the base model, the corpus, the teacher cache, the base model's
    quick perplexity on ``early_abort.windows`` eval windows (derived from the cost model it
    measures at setup when the study file sets none), which the early abort compares against
    after the cheap stages, and the study's task evaluations. Cheap first: a budget decided
    before the expensive stages (:data:`autoslim.search.budgets.STAGES`) abandons the recipe with
    the reason — the size bound from the parameter shapes before the build and the exact size
    right after it; the peak memory of a dry run before distillation (where the model then
    already holds the built one's memory) or else before measuring — and the task
    evaluations run only on a recipe that meets every other budget.
    """

    def __init__(self, config: StudyConfig) -> None:
        from transformers.utils import logging as transformers_logging

        from autoslim import data
        from autoslim.compress.calibration import calibration_batch, context_window
        from autoslim.compress.distill import TeacherCache
        from autoslim.measure import Workload
        from autoslim.measure.perplexity import perplexity
        from autoslim.pipeline import Pipeline
        from autoslim.search.costs import measure_costs

        transformers_logging.disable_progress_bar()
        self.config = config
        self.device = config.model.device
        self.base_recipe = base_recipe(config)
        self.workload = Workload.from_dict(config.workload)
        progress.report("setup: load the base model")
        self.pipeline = Pipeline.load(
            config.model.name,
            precision=self.base_recipe.precision,
            workload=self.workload,
            text=list(config.data.text),
            dataset=config.data.dataset,
            device=self.device,
            seed=config.study.seed,
            trust_remote_code=config.model.trust_remote_code,
        )
        self.base = base = self.pipeline.base
        self.corpus = corpus = self.pipeline.corpus
        model_config = base.model.config
        self.pipeline.teacher_cache = TeacherCache(
            base.model,
            data.tokens(base.tokenizer, corpus, "kd"),
            window=context_window(model_config),
        )
        self.pipeline.calibration = calibration_batch(
            base.tokenizer, corpus, window=context_window(model_config), seed=config.study.seed
        )
        self.quick_ids = self.pipeline.eval_ids()
        progress.report("setup: cost model")
        self.costs = measure_costs(
            self.pipeline,
            eval_ids=self.quick_ids,
            kd_steps_space=[int(v) for v in config.search["kd_steps"].extremes()],
            runtimes=[str(v) for v in config.search["runtime"].values()],
            early_abort_windows_set=config.early_abort.windows,
            recovery_space=[str(v) for v in config.search["recovery"].values()],
            recovery_steps=int(max(config.search["recovery_steps"].extremes())),
        )
        self.early_windows = self.costs.early_abort_windows
        self.quick_protocol = replace(self.workload.protocol, max_windows=self.early_windows)
        self._perplexity = perplexity
        progress.report("setup: base perplexity")
        self.base_quick_perplexity = perplexity(
            base.model, self.quick_ids, self.quick_protocol
        ).perplexity
        from autoslim.search.budgets import SizeBound
        from autoslim.tasks.run import TaskEvaluator

        self.size_bound = SizeBound(model_config)
        self.tasks = TaskEvaluator(config.tasks, self.device) if config.tasks else None
        self.info: dict[str, Any] = {
            "corpus_fingerprint": corpus.fingerprint,
            "model": config.model.name,
            "base_quick_perplexity": self.base_quick_perplexity,
            "base_precision": self.base_recipe.precision,
            "costs": self.costs.to_dict(),
        }

    def _check(self, stage: str, model: Any) -> None:
        early = self.config.early_abort
        if not early.enabled:
            return
        quick = self._perplexity(model, self.quick_ids, self.quick_protocol).perplexity
        ratio = quick / self.base_quick_perplexity
        if not math.isfinite(quick) or ratio > early.max_ppl_ratio:
            raise TrialAbandoned(
                f"perplexity {quick:.4g} after {stage} is {ratio:.3g}x the base model's "
                f"{self.base_quick_perplexity:.4g} on the same {self.early_windows} eval windows "
                "(a quick check, not the full protocol), above "
                f"early_abort.max_ppl_ratio={early.max_ppl_ratio:g}: distillation is unlikely "
                "to recover it",
                {"stage": stage, "quick_perplexity": quick, "ratio": ratio},
            )

    def _dry_run(self, model: Any, limits: Sequence[Limit], when: str) -> None:
        from autoslim.measure import dry_run_peak_bytes

        progress.report("dry run")
        peak = dry_run_peak_bytes(model, self.quick_ids, self.workload)
        _give_up(limits, {"peak_memory_bytes": peak}, f"in a dry run {when}")

    def __call__(self, recipe: Recipe, limits: Sequence[Limit] = ()) -> dict[str, Any]:
        from autoslim.build import final_before_distillation
        from autoslim.search.budgets import DRY_RUN, SHAPES, missed

        sized = [limit for limit in limits if limit.known == SHAPES]
        dry = [limit for limit in limits if limit.known == DRY_RUN]
        bound = {"size_bytes": self.size_bound.of_recipe(recipe)}
        _give_up(sized, bound, "as a lower bound from the parameter shapes, before the build")
        dry_before_distillation = bool(dry) and final_before_distillation(recipe)

        def check(stages: str, model: Any) -> None:
            if dry_before_distillation:  # one forward: cheaper than the quick perplexity
                self._dry_run(model, dry, "before distillation: not distilled or measured")
            if stages:
                self._check(stages, model)

        with self.pipeline.built(recipe, check=check) as built:
            exact = {"size_bytes": built.model.size_bytes()}
            _give_up(sized, exact, f"right after the build ({recipe.runtime}): not measured")
            if dry and not dry_before_distillation:
                self._dry_run(built.model, dry, "after the build: not measured")
            progress.report("measure")
            measurement = self.pipeline.measure(built.model).to_dict()
            payload: dict[str, Any] = {
                "measurement": measurement,
                "build": {"stage_seconds": built.stage_seconds, "info": built.info},
            }
            if self.tasks is None:
                return payload
            cheaper = [limit for limit in limits if limit.figure not in self.config.tasks]
            misses = missed(cheaper, measurement)
            if misses:
                payload["tasks_skipped"] = "; ".join(m.explain(measurement) for m in misses)
            else:
                results = self.tasks.evaluate(
                    built.model.transformers_model(), self.base.tokenizer
                )
                payload["tasks"] = {name: r.to_dict() for name, r in results.items()}
            return payload


def _give_up(limits: Sequence[Limit], figures: dict[str, Any], when: str) -> None:
    """Abandon the trial when ``figures`` already miss one of ``limits``, saying ``when``."""
    from autoslim.search.budgets import missed

    for limit in missed(limits, figures):
        raise TrialAbandoned(
            f"{limit.explain(figures)} {when}",
            {"stage": "budget", "budget": limit.name, **figures},
        )
