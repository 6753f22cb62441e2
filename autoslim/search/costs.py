"""What a trial costs on this machine, measured once per study, and the defaults derived from it.

At setup the trial worker times the base model once per stage (:func:`measure_costs`): one
copy (every trial starts from an fp32 copy of the base), one eval window, one distillation
step, one recovery pass of each method the search space holds, one workload run. Each figure is
*quiet* seconds: wall time less the share of it the
process waited for a CPU (Linux schedstat, :func:`quiet_seconds`), so a busy machine at study
start does not inflate the model. :class:`CostModel` predicts a trial from its recipe
(``copy + early-abort check + recovery pass + kd_steps × step + perplexity and drift over the
eval windows + (warm-up + repeats) × run``) and derives what a study file does not set:

- the trial timeout: ``TIMEOUT_FACTOR`` × the trial's predicted seconds, at least
  ``MIN_TIMEOUT_SECONDS``; quantized or pruned models may run slower than the base, which the
  factor leaves room for;
- the early-abort windows: as many as cost at most ``EARLY_ABORT_SHARE`` of the cheapest
  trial with distillation, between ``EARLY_ABORT_WINDOWS`` bounds;
- the ETA printed at start (trials that fit the time limit), and, when fewer than
  ``FEW_TRIALS`` of the longest kind fit it, the KD steps that would let that many run.

A recovery pass is timed as one that heals every decoder layer at the space's most
``recovery_steps`` (:func:`recovery_pass_seconds`): exact for MLP and head cuts, an upper bound
for layer drops (which heal only the layers next to a gap). The longest kind of trial is the
one with the most KD steps and the costliest recovery.

Timeouts run on the trial's own clock (:class:`TrialClock`): wall time advances it only in the
share that the worker process had the CPU it asked for (CPU time over CPU time plus run-queue
wait, per poll). A healthy trial starved by other work on the machine runs on; a hang (asleep,
deadlocked, blocked) or a busy loop advances it at the wall rate and is killed. However starved,
a trial is killed after ``MAX_STRETCH`` × its timeout of wall time.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

# A trial may run this many times its predicted seconds (on its own clock) before it is killed.
TIMEOUT_FACTOR = 6.0
MIN_TIMEOUT_SECONDS = 120.0
# However starved it is, a trial is killed after this many times its timeout of wall time.
MAX_STRETCH = 10.0
# Timeout of a trial whose objective publishes no cost model (test fakes).
UNMEASURED_TIMEOUT_SECONDS = 1800.0
EARLY_ABORT_SHARE = 0.05
# A time limit that fits fewer trials of the space's longest kind than this gets a hint.
FEW_TRIALS = 10
EARLY_ABORT_WINDOWS = (2, 8)
# Bounds of a derived search.kd_steps: fewer steps than the minimum recover little.
MIN_KD_STEPS = 10
MAX_KD_STEPS = 2000
# Perplexity windows per eval window in measure(): the student's perplexity, then drift
# (the teacher and the student again).
MEASURE_PASSES = 3


def schedstat_seconds(pid: int | str = "self") -> tuple[float, float] | None:
    """(CPU seconds, seconds runnable but waiting for a CPU) summed over ``pid``'s threads;
    None where the kernel does not expose schedstat (or the process is gone)."""
    cpu = wait = 0
    found = False
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path) as f:
                fields = f.read().split()
            cpu += int(fields[0])
            wait += int(fields[1])
            found = True
        except (OSError, IndexError, ValueError):
            continue  # a thread that exited between the listing and the read
    return (cpu / 1e9, wait / 1e9) if found else None


def quiet_seconds(
    wall: float, before: tuple[float, float] | None, after: tuple[float, float] | None
) -> float:
    """``wall`` less the share of it spent waiting for a CPU between two schedstat reads.

    Nothing used and nothing waited (asleep, blocked, or no schedstat) counts in full."""
    if before is None or after is None:
        return wall
    cpu, wait = after[0] - before[0], after[1] - before[1]
    if cpu < 0 or wait < 0 or cpu + wait <= 0:
        return wall
    return wall * cpu / (cpu + wait)


class TrialClock:
    """The own clock of the trial running in process ``pid``: :meth:`read` returns its own
    seconds (wall time while it had the CPU it asked for) and the wall seconds so far."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.own_seconds = 0.0
        self._wall = time.monotonic()
        self._started = self._wall
        self._stat = schedstat_seconds(pid)

    def read(self) -> tuple[float, float]:
        now = time.monotonic()
        stat = schedstat_seconds(self.pid)
        self.own_seconds += quiet_seconds(now - self._wall, self._stat, stat)
        self._wall, self._stat = now, stat
        return self.own_seconds, now - self._started


@dataclass(frozen=True)
class CostModel:
    """Quiet seconds of each stage for the base model on this machine, and the study's shape."""

    copy_seconds: float
    eval_window_seconds: float
    kd_step_seconds: float
    workload_run_seconds: float
    eval_windows: int  # windows a trial's perplexity evaluates
    workload_runs: int  # warm-up + repeats
    early_abort_windows: int
    cpu_wait_fraction: float  # while the costs were measured
    teacher_seconds: float = 0.0  # the teacher's share of the measured KD step (cached later)
    # One recovery pass per method of the search space, healing every decoder layer.
    recovery_seconds: dict[str, float] = field(default_factory=dict)
    # one conversion of the base model into each runtime of the space but torch (none there)
    convert_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def longest_recovery(self) -> str:
        """The costliest recovery method the space holds ("none" if it holds none)."""
        return max(self.recovery_seconds, key=self.recovery_seconds.__getitem__, default="none")

    def trial_seconds(
        self,
        kd_steps: int,
        *,
        recovery: str = "none",
        runtime: str = "torch",
        cheap_stages: bool = True,
    ) -> float:
        """Predicted quiet seconds of a trial with ``kd_steps`` distillation steps after a
        ``recovery`` pass, converted into ``runtime`` (the workload timed in torch: no slower
        in the engines it is compared with here)."""
        check = self.early_abort_windows * self.eval_window_seconds if cheap_stages else 0.0
        return (
            self.copy_seconds
            + check
            + self.recovery_seconds.get(recovery, 0.0)
            + kd_steps * self.kd_step_seconds
            + self.convert_seconds.get(runtime, 0.0)
            + MEASURE_PASSES * self.eval_windows * self.eval_window_seconds
            + self.workload_runs * self.workload_run_seconds
        )

    def timeout_seconds(
        self, kd_steps: int, recovery: str = "none", runtime: str = "torch"
    ) -> float:
        """The trial timeout (own seconds) a study file that sets none gets."""
        trial = self.trial_seconds(kd_steps, recovery=recovery, runtime=runtime)
        return max(MIN_TIMEOUT_SECONDS, TIMEOUT_FACTOR * trial)

    def describe(self, kd_steps: int, time_limit_seconds: float | None = None) -> str:
        """One line for the start of a study, e.g. ``one KD step 7.9 s, one eval window
        120 ms, one workload run 1.1 s, recovery block_kd 2.5 min; one trial with 50 KD steps
        and block_kd ≈ 8 min (timeout 48 min), about 60 trials in 8 h``."""
        recovery = self.longest_recovery
        trial = self.trial_seconds(kd_steps, recovery=recovery)
        passes = "".join(
            f", recovery {method} {_short(seconds)}"
            for method, seconds in self.recovery_seconds.items()
        )
        converts = "".join(
            f", one {r} conversion {_short(t)}" for r, t in self.convert_seconds.items()
        )
        kind = f"{kd_steps} KD steps" + (f" and {recovery}" if recovery != "none" else "")
        timeout = self.timeout_seconds(kd_steps, recovery)
        text = (
            f"one KD step {_short(self.kd_step_seconds)}, one eval window "
            f"{_short(self.eval_window_seconds)}, one workload run "
            f"{_short(self.workload_run_seconds)}{passes}{converts}; one trial with {kind} ≈ "
            f"{duration(trial)} (timeout {duration(timeout)})"
        )
        if time_limit_seconds is not None:
            count = math.floor(time_limit_seconds / trial)
            text += f", about {count} trials in {duration(time_limit_seconds)}"
            fitting = self.kd_steps_fitting(FEW_TRIALS, time_limit_seconds)
            if count < FEW_TRIALS and kd_steps and fitting < kd_steps:
                text += (
                    f"; for {FEW_TRIALS} trials in that time, keep search.kd_steps at or below "
                    f"{fitting}"
                    if fitting > 0
                    else f"; not even {FEW_TRIALS} trials without distillation fit that time"
                )
        if self.cpu_wait_fraction > 0.05:
            text += f" (measured with {self.cpu_wait_fraction:.0%} CPU wait, taken out)"
        return text

    def kd_steps_fitting(self, trials: int, seconds: float) -> int:
        """The most KD steps per trial that let ``trials`` trials of the longest kind (with
        the costliest recovery) run in ``seconds``."""
        spare = seconds / trials - self.trial_seconds(0, recovery=self.longest_recovery)
        return max(0, math.floor(spare / self.kd_step_seconds)) if self.kd_step_seconds else 0

    def derived_kd_steps(self, time_limit_seconds: float) -> list[int]:
        """``search.kd_steps`` for a study file that leaves it out: none, a short and a long
        distillation, the long one as many steps as let ``FEW_TRIALS`` such trials fit the
        time limit (rounded down to 1, 2 or 5 × a power of ten, at most ``MAX_KD_STEPS``);
        ``[0]`` when fewer than ``MIN_KD_STEPS`` fit."""
        longest = _round_down(
            min(MAX_KD_STEPS, self.kd_steps_fitting(FEW_TRIALS, time_limit_seconds))
        )
        if longest < MIN_KD_STEPS:
            return [0]
        short = _round_down(longest // 4)
        return [0, short, longest] if short >= MIN_KD_STEPS else [0, longest]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CostModel:
        return cls(**d)


def _round_down(n: int) -> int:
    """The largest 1, 2 or 5 × 10^k at or below ``n`` (0 below 1)."""
    if n < 1:
        return 0
    power = int(10 ** (len(str(n)) - 1))
    return max(m * power for m in (1, 2, 5) if m * power <= n)


def _short(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def duration(seconds: float) -> str:
    """``seconds`` as a person reads them: "45 s", "12 min", "2.5 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def early_abort_windows(
    eval_window_seconds: float, cheapest_kd_trial_seconds: float, available: int
) -> int:
    """Windows the early-abort check evaluates: at most ``EARLY_ABORT_SHARE`` of the cheapest
    trial it may save, within ``EARLY_ABORT_WINDOWS`` and the eval split."""
    low, high = EARLY_ABORT_WINDOWS
    affordable = math.floor(EARLY_ABORT_SHARE * cheapest_kd_trial_seconds / eval_window_seconds)
    return max(1, min(available, max(low, min(high, affordable))))


class _Stopwatch:
    """Quiet seconds of a block, the accelerator synchronised at both edges."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync

    def __enter__(self) -> _Stopwatch:
        self.sync()
        self._stat = schedstat_seconds()
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sync()
        self.wall = time.perf_counter() - self._started
        stat = schedstat_seconds()
        self.quiet = quiet_seconds(self.wall, self._stat, stat)


@contextlib.contextmanager
def _errors_only(name: str) -> Iterator[None]:
    """Hold back logger ``name``'s warnings meanwhile: the timing pass heals a one-channel cut
    no recipe makes, and what it says of each layer (a block put back as it was) is about that
    cut, not the user's model."""
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def measure_costs(
    pipeline: Any,
    *,
    eval_ids: Any,
    kd_steps_space: list[int],
    early_abort_windows_set: int | None,
    runtimes: Sequence[str] = (),
    recovery_space: Sequence[str] = (),
    recovery_steps: int = 0,
) -> CostModel:
    """Time each stage once on the base model of ``pipeline`` (an
    :class:`autoslim.pipeline.Pipeline` with its teacher cache and calibration windows), one
    conversion into each of ``runtimes`` but torch, and one recovery pass per method of
    ``recovery_space`` (block distillation at ``recovery_steps`` steps); see the module doc."""
    import copy
    from dataclasses import replace

    import torch

    from autoslim.compress.distill import distill
    from autoslim.measure.perplexity import perplexity
    from autoslim.measure.workload import WorkloadRunner, synchronize
    from autoslim.recipe import Recipe

    model = pipeline.base.model
    workload = pipeline.workload
    teacher_cache = pipeline.teacher_cache
    dev = torch.device(pipeline.device)

    def watch() -> _Stopwatch:
        return _Stopwatch(lambda: synchronize(dev))

    protocol = workload.protocol
    available = len(protocol.window_starts(len(eval_ids)))
    eval_windows = min(available, protocol.max_windows or available)
    probe = min(EARLY_ABORT_WINDOWS[0], available)
    with watch() as copied:
        student = copy.deepcopy(model).to(device=pipeline.device, dtype=torch.float32)
    with watch() as evaluated:
        perplexity(model, eval_ids, replace(protocol, max_windows=probe))
    d = Recipe()
    kd = {"temperature": d.kd_temperature, "alpha": d.kd_alpha, "lr": d.kd_lr}
    teacher_before = teacher_cache.teacher_seconds
    with watch() as stepped:
        distill(student, teacher_cache, steps=1, **kd)
    recovery = _recovery_seconds(pipeline, recovery_space, recovery_steps, watch)
    del student
    teacher = teacher_cache.teacher_seconds - teacher_before
    runner = WorkloadRunner(model, eval_ids, workload)
    with watch() as ran:
        runner.run()
    watches = [copied, evaluated, stepped, ran]
    converted = _convert_seconds(pipeline, runtimes, watch)
    watches += converted.values()
    wall = sum(w.wall for w in watches)
    # The teacher runs once per KD window for the whole study, not per step: count the step
    # without it (its seconds are the wall share of the measured step).
    step_seconds = max(0.0, stepped.quiet - teacher * stepped.quiet / max(stepped.wall, 1e-9))
    partial = CostModel(
        copy_seconds=copied.quiet,
        eval_window_seconds=evaluated.quiet / probe,
        kd_step_seconds=step_seconds,
        workload_run_seconds=ran.quiet,
        eval_windows=eval_windows,
        workload_runs=workload.warmup + workload.repeats,
        early_abort_windows=0,
        cpu_wait_fraction=1 - sum(w.quiet for w in watches) / wall if wall > 0 else 0.0,
        teacher_seconds=teacher,
        recovery_seconds=recovery,
        convert_seconds={runtime: w.quiet for runtime, w in converted.items()},
    )
    cheapest = min((s for s in kd_steps_space if s > 0), default=0)
    windows = early_abort_windows_set or early_abort_windows(
        partial.eval_window_seconds, partial.trial_seconds(cheapest), available
    )
    return replace(partial, early_abort_windows=windows)


def _recovery_seconds(
    pipeline: Any, methods: Sequence[str], steps: int, watch: Callable[[], _Stopwatch]
) -> dict[str, float]:
    """CPU seconds of one recovery pass per method (but none) over a one-channel cut of every
    layer of the base model, block distillation at ``steps`` steps."""
    import copy

    import torch

    from autoslim.compress.families import family_of
    from autoslim.compress.recovery import every_layer_cut, recover
    from autoslim.recipe import Recipe

    model = pipeline.base.model
    seconds = {}
    for method in methods:
        if method == "none":
            continue
        healed = copy.deepcopy(model).to(device=pipeline.device, dtype=torch.float32)
        with watch() as healing, _errors_only(recover.__module__):
            recover(
                healed,
                model,
                family_of(model.config),
                every_layer_cut(model.config, method),
                pipeline.calibration_windows(),
                method=method,
                steps=steps,
                lr=Recipe().recovery_lr,
            )
        seconds[method] = healing.quiet
        del healed
    return seconds


def _convert_seconds(
    pipeline: Any, runtimes: Sequence[str], watch: Callable[[], _Stopwatch]
) -> dict[str, _Stopwatch]:
    """One timed conversion of the base model into each runtime but torch."""
    from autoslim.precisions import precision_of
    from autoslim.recipe import Recipe

    model = pipeline.base.model
    precision = precision_of(next(model.parameters()).dtype)
    timed = {}
    for runtime in runtimes:
        if runtime == "torch":
            continue
        with (
            watch() as converted,
            pipeline.converted(model, Recipe(runtime=runtime, precision=precision)),
        ):
            pass
        timed[runtime] = converted
    return timed
