"""Budgets: the limits a recipe must meet, declared once.

Every hardware budget is one :class:`HardwareBudget` in :data:`BUDGETS`: its ``[budgets]``
key in the study file, the figure it bounds, whether that figure must stay below (``max``) or
above (``min``) the limit, its ``pick`` / ``export`` flag and how its values are written. The
study-file keys, the CLI flags, the Optuna constraints, pick's filter and explanation and the
report's budget lines all derive from it.

Each budget says when its figure is known (``known``, one of :data:`STAGES`, cheapest first):
the stored size as a lower bound from the recipe and the model's parameter shapes before the
build (:class:`SizeBound`) and exactly right after it, the peak memory from a dry run (one
forward of the workload's largest input under the measurement's own memory meter), the rest
only from the measured workload. The trial worker abandons a recipe at the first stage whose
figures already miss a limit known there.

A study's constraints are :class:`Limit` values (:func:`limits_of`): the perplexity budget
(relative to the base model), each hardware budget, and each task constraint (relative to the
base's score or absolute). A limit's violation is ``(value - limit) / scale`` for a ``max``
bound and ``(limit - value) / scale`` for a ``min`` one, ≤ 0 feasible, where ``scale`` is the
base model's figure for a relative limit (so the perplexity constraint stays
``perplexity / base - 1 - max_ppl_increase``) and the limit itself for an absolute one.

``peak_memory_bytes`` is, on CUDA, ``torch.cuda.max_memory_allocated`` over the workload
(tensors on the GPU); on the CPU the process's resident-set high-water (VmHWM) over the
workload, which includes Python, torch, the corpus and the teacher model.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from autoslim.errors import ConfigError
from autoslim.tasks.spec import TASK_BOUNDS

# The name of the perplexity-budget constraint (Optuna's ``constraints:NAME`` system attr).
PERPLEXITY = "perplexity_increase"

# When a budget's figure is known, cheapest first: from the recipe and the parameter shapes
# (before the build; exact right after it), from a dry run of the workload, from measuring.
SHAPES, DRY_RUN, MEASURE = "shapes", "dry_run", "measure"
STAGES = (SHAPES, DRY_RUN, MEASURE)

_BYTE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_bytes(text: str | float) -> float:
    """``50MB``, ``12 GiB``, ``1e9`` or a number → bytes."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    found = re.fullmatch(r"\s*([0-9.eE+]+)\s*([A-Za-z]*)\s*", str(text))
    unit = found.group(2).lower() if found else ""
    if found is None or unit not in _BYTE_UNITS:
        raise ValueError(f"{text!r} is not a size; write e.g. 50MB, 12GiB or 8000000")
    return float(found.group(1)) * _BYTE_UNITS[unit]


def format_bytes(value: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.4g} {unit}"
    return f"{value:.0f} B"


@dataclass(frozen=True)
class HardwareBudget:
    """One declared budget: ``[budgets] key = limit`` bounds the figure ``figure``."""

    key: str  # the study-file key and the constraint name
    figure: str  # the measured figure it bounds
    bound: str  # "max": figure <= limit; "min": figure >= limit
    flag: str  # pick / export flag that tightens it
    kind: str  # "bytes" | "rate" | "fraction" | "nats": how values are read and shown
    doc: str
    known: str = MEASURE  # the stage (:data:`STAGES`) at which its figure is first known
    # Set where the figure is never below the model's stored weight bytes: what the smallest
    # model of the search space would need, said when the limit is below its size.
    floor: str = ""

    def parse(self, value: Any) -> float:
        """A limit as the study file or a flag gives it; ValueError says what is wrong."""
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is a boolean; write a number")
        number = parse_bytes(value) if self.kind == "bytes" else _number(value)
        if not math.isfinite(number) or number < 0:
            raise ValueError(f"{value!r}: must be a finite number >= 0")
        if self.kind != "nats" and number == 0:
            raise ValueError(f"{value!r}: must be a positive number")
        if self.kind == "fraction" and number > 1:
            raise ValueError(f"{value!r}: a fraction between 0 and 1")
        return number

    def show(self, value: float) -> str:
        if self.kind == "bytes":
            return format_bytes(value)
        return f"{value:.4g}" + (" tokens/s" if self.kind == "rate" else "")


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{value!r} is not a number") from e


BUDGETS: tuple[HardwareBudget, ...] = (
    HardwareBudget(
        "max_size_bytes",
        "size_bytes",
        "max",
        "--max-size",
        "bytes",
        "weight bytes as stored (bounded from the parameter shapes before the build, decided "
        "right after it, before measuring)",
        known=SHAPES,
        floor="the smallest model of the search space can reach",
    ),
    HardwareBudget(
        "max_peak_memory_bytes",
        "peak_memory_bytes",
        "max",
        "--max-peak-memory",
        "bytes",
        "peak memory over the workload: CUDA max_memory_allocated on a GPU, the process's "
        "resident-set high-water (VmHWM) on the CPU (a dry run decides it before measuring)",
        known=DRY_RUN,
        floor="the weights of the smallest model of the search space take, which the "
        "workload's peak memory holds",
    ),
    HardwareBudget(
        "min_prefill_tokens_per_second",
        "prefill_tokens_per_second",
        "min",
        "--min-prefill-tps",
        "rate",
        "prompt tokens processed per second in the workload's batched prefill",
    ),
    HardwareBudget(
        "min_decode_tokens_per_second",
        "decode_tokens_per_second",
        "min",
        "--min-decode-tps",
        "rate",
        "tokens generated per second in the workload's batch-1 greedy decode",
    ),
    HardwareBudget(
        "min_top1_agreement",
        "top1_agreement",
        "min",
        "--min-top1-agreement",
        "fraction",
        "share of eval tokens where the model's argmax matches the base model's",
    ),
    HardwareBudget(
        "max_teacher_kl",
        "teacher_kl",
        "max",
        "--max-teacher-kl",
        "nats",
        "mean KL(base ‖ model) per eval token, in nats",
    ),
)
BY_KEY = {b.key: b for b in BUDGETS}


@dataclass(frozen=True)
class Limit:
    """One constraint on a trial's figure ``figure``: ``name`` is its constraint name."""

    name: str
    figure: str
    bound: str  # "max" | "min"
    value: float  # the limit on the figure
    scale: float  # what a violation is relative to (the base's figure, or the limit)
    text: str  # how the limit is shown, e.g. "size_bytes <= 50 MB"
    known: str = MEASURE  # the stage (:data:`STAGES`) at which its figure is first known

    def violation(self, figures: Mapping[str, Any]) -> float:
        """≤ 0 when ``figures`` meet the limit; +inf when the figure was not measured."""
        value = _figure(figures, self.figure)
        if value is None:
            return math.inf
        gap = value - self.value if self.bound == "max" else self.value - value
        return gap / self.scale if self.scale > 0 else gap

    def allows(self, figures: Mapping[str, Any]) -> bool:
        return self.violation(figures) <= 0

    def explain(self, figures: Mapping[str, Any]) -> str:
        """``met size_bytes <= 50 MB (12 MB)`` or ``missed ...``."""
        value = _figure(figures, self.figure)
        shown = "not measured" if value is None else _show(self.figure, value)
        return f"{'met' if self.allows(figures) else 'missed'} {self.text} ({shown})"

    def tighter(self, value: float, given: str) -> Limit:
        """This limit with a new bound that may only be tighter (``given``: the flag and
        value as the user gave them)."""
        looser = value > self.value if self.bound == "max" else value < self.value
        if looser:
            raise ConfigError(
                f"{given} is looser than the study's "
                f"{self.text}: only a tighter budget can be chosen after the search (the search "
                "skipped work on recipes beyond its own); give a tighter value or search again"
            )
        return _absolute(self.name, self.figure, self.bound, value, self.known)


def _show(figure: str, value: float) -> str:
    budget = next((b for b in BUDGETS if b.figure == figure), None)
    return budget.show(value) if budget else f"{value:.4g}"


def _figure(figures: Mapping[str, Any], name: str) -> float | None:
    try:
        value = float(figures[name])
    except (KeyError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _absolute(name: str, figure: str, bound: str, value: float, known: str = MEASURE) -> Limit:
    sign = "<=" if bound == "max" else ">="
    return Limit(
        name, figure, bound, value, abs(value), f"{figure} {sign} {_show(figure, value)}", known
    )


def relative(name: str, figure: str, bound: str, base: float, change: float) -> Limit:
    """A limit ``change`` (a fraction) worse than the base model's ``base``."""
    value = base * (1 + change) if bound == "max" else base * (1 - change)
    sign = "<=" if bound == "max" else ">="
    text = f"{figure} {sign} {value:.4g} (base {base:.4g} {'+' if bound == 'max' else '-'}"
    return Limit(name, figure, bound, value, abs(base), f"{text}{change:.1%})")


def hardware_limits(budgets: Mapping[str, float]) -> list[Limit]:
    """The limits of a study's ``[budgets]`` table, in declaration order."""
    return [
        _absolute(b.key, b.figure, b.bound, budgets[b.key], b.known)
        for b in BUDGETS
        if b.key in budgets
    ]


def task_limits(tasks: Mapping[str, Any], base: Mapping[str, Any] | None) -> list[Limit]:
    """Each task's constraint: absolute (:data:`TASK_BOUNDS`) or relative to the base
    model's score (``max_relative_loss``, only once the base's score is known)."""
    out: list[Limit] = []
    for name, task in tasks.items():
        bound = "min" if task.goal == "max" else "max"
        for key, fixed in TASK_BOUNDS.items():
            if getattr(task, key) is not None:
                out.append(_absolute(_task_limit(name), name, fixed, getattr(task, key)))
        if task.max_relative_loss is not None:
            score = None if base is None else _figure(base, name)
            if score is not None:
                out.append(relative(_task_limit(name), name, bound, score, task.max_relative_loss))
    return out


def _task_limit(name: str) -> str:
    return f"task:{name}"


def task_key(name: str, bound_key: str) -> str:
    """The study-file key of a task's absolute bound (``tasks.NAME.at_least``): how
    :func:`tightened` names it."""
    return f"tasks.{name}.{bound_key}"


def task_flag(bound_key: str) -> str:
    """The pick / export flag of a task bound (``--task-at-least NAME=VALUE``)."""
    return "--task-" + bound_key.replace("_", "-")


def tightened(
    limits: Sequence[Limit], tighten: Mapping[str, float], tasks: Collection[str]
) -> list[Limit]:
    """``limits`` with the bounds of ``tighten`` (a ``[budgets]`` key or a :func:`task_key`
    of one of ``tasks`` → limit) applied; each may only tighten the study's own (a bound the
    study does not set is new). ConfigError names the flag of a looser bound or an unknown
    task."""
    out = list(limits)
    for key, value in tighten.items():
        if key in BY_KEY:
            budget = BY_KEY[key]
            name, figure, bound, known = key, budget.figure, budget.bound, budget.known
            given = f"{budget.flag} {budget.show(value)}"
        else:
            task, _, bound_key = key.removeprefix("tasks.").rpartition(".")
            given = f"{task_flag(bound_key)} {task}={value:g}"
            if task not in tasks:
                declared = ", ".join(sorted(tasks)) or "none"
                raise ConfigError(
                    f"{given}: the study has no task {task!r} (its tasks: {declared}); name "
                    "one of its [tasks]"
                )
            name, figure, bound, known = _task_limit(task), task, TASK_BOUNDS[bound_key], MEASURE
        same = [i for i, limit in enumerate(out) if limit.name == name and limit.bound == bound]
        if not same:  # a bound the study does not set: any value tightens it
            unbounded = math.inf if bound == "max" else -math.inf
            out.append(_absolute(name, figure, bound, unbounded, known))
        index = same[0] if same else len(out) - 1
        out[index] = out[index].tighter(value, given)
    return out


def limits_of(config: Any, base: Mapping[str, Any] | None) -> list[Limit]:
    """Every constraint of a study, perplexity first, then budgets, then tasks. ``base`` is
    the base model's figures (None before the base trial is done: relative limits are left
    out then)."""
    out: list[Limit] = []
    ppl = None if base is None else _figure(base, "perplexity")
    if ppl is not None:
        out.append(relative(PERPLEXITY, "perplexity", "max", ppl, config.max_ppl_increase))
    return [*out, *hardware_limits(config.budgets), *task_limits(config.tasks, base)]


def constraint_names(config: Any) -> list[str]:
    """The names of a study's constraints in the order a trial stores their violations."""
    limits = limits_of(config, _all_known(config))
    return [limit.name for limit in limits]


def _all_known(config: Any) -> dict[str, float]:
    return {"perplexity": 1.0, **{name: 1.0 for name in config.tasks}}


def missed(limits: Sequence[Limit], figures: Mapping[str, Any]) -> list[Limit]:
    return [limit for limit in limits if not limit.allows(figures)]


class SizeBound:
    """A lower bound of the stored size of what a recipe builds from a model with
    ``model_config``, from its parameter shapes on the meta device (no weights): every block
    shrunk by the dropped layers, its MLP to the pruned width and its attention by the most
    heads dropped in any layer, 2-D weights at the recipe's bits, the rest in its float type.
    Quantization scales, heads only masked and GQA's key/value heads only add to it."""

    def __init__(self, model_config: Any) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        from autoslim.compress.families import family_of

        family = family_of(model_config)
        self.width = int(getattr(model_config, family.intermediate_key, 0) or 0)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(model_config)
        self.blocks = int(getattr(model_config, "num_hidden_layers", 0) or 1)
        self.heads = int(getattr(model_config, "num_attention_heads", 0) or 1)
        layers = family.layers_path + "."
        attention = f".{family.attention}." if family.attention else None
        mlp = (*family.mlp_in, family.mlp_out)
        embedding = model.get_input_embeddings().weight
        # (elements, part of a block: "mlp" | "attention" | "block" | "", quantizable)
        self.parameters: list[tuple[int, str, bool]] = []
        seen: set[int] = set()
        for name, param in model.named_parameters():
            if id(param) in seen:
                continue
            seen.add(id(param))
            part = ""
            if name.startswith(layers):
                part = "block"
                if any(f".{m}." in name for m in mlp):
                    part = "mlp"
                elif attention and attention in name:
                    part = "attention"
            quantizable = param.dim() == 2 and param is not embedding
            self.parameters.append((param.numel(), part, quantizable))

    def bytes(
        self, drop_layers: int, prune_ratio: float, heads_dropped: int, bits: int, floats: int
    ) -> float:
        """The bound for one corner of the knobs (``heads_dropped``: per layer; ``floats``:
        bytes per unquantized weight)."""
        from autoslim.compress.prune import pruned_width

        kept = (self.blocks - min(drop_layers, self.blocks - 1)) / self.blocks
        # a config that does not say its MLP width (GPT-2's n_inner = None): 0 stays sound
        width = pruned_width(self.width, prune_ratio) / self.width if self.width else 0.0
        width = 1.0 if not prune_ratio else width
        heads = 1 - min(heads_dropped, self.heads - 1) / self.heads
        shrink = {"": 1.0, "block": kept, "mlp": kept * width, "attention": kept * heads}
        return sum(
            numel * shrink[part] * (bits / 8 if quantizable and bits < 16 else floats)
            for numel, part, quantizable in self.parameters
        )

    def of_recipe(self, recipe: Any) -> float:
        """The bound for what ``recipe`` builds."""
        heads = _most_per_layer(recipe.drop_heads) or recipe.drop_heads_per_layer
        floats = _float_bytes(recipe.precision)
        return self.bytes(recipe.drop_layers, recipe.prune_ratio, heads, recipe.bits, floats)

    def smallest(self, space: Any) -> tuple[float, str]:
        """The bound for the smallest model ``space`` can build, and the corner it assumes:
        the most layers dropped, the widest MLP prune, the most heads dropped, the fewest
        weight bits and the narrowest float type."""
        from autoslim.recipe import KNOBS

        drop_layers = int(max(space["drop_layers"].extremes()))
        prune = float(max(space["prune_ratio"].extremes()))
        heads_knob = KNOBS["drop_heads"]
        explicit = [_most_per_layer(heads_knob.check(h)) for h in space["drop_heads"].values()]
        heads = max([int(max(space["drop_heads_per_layer"].extremes())), *explicit])
        bits = min(int(b) for b in space["bits"].values())
        floats = min(_float_bytes(p) for p in space["precision"].values())
        corner = (
            f"{min(drop_layers, self.blocks - 1)} layer(s) dropped, MLP pruned {prune:.0%}, "
            f"{heads} head(s) dropped per layer, {bits}-bit weights, {8 * floats}-bit floats"
        )
        return self.bytes(drop_layers, prune, heads, bits, floats), corner


def _most_per_layer(heads: Sequence[tuple[int, int]]) -> int:
    """The most heads an explicit ``LAYER:HEAD`` list drops from one layer."""
    return max(Counter(layer for layer, _ in heads).values(), default=0)


def _float_bytes(precision: str) -> int:
    return 4 if precision == "fp32" else 2


def smallest_size_bytes(model_config: Any, space: Any) -> tuple[float, str]:
    """:meth:`SizeBound.smallest` of ``space`` for a model with ``model_config``."""
    return SizeBound(model_config).smallest(space)


def check_reachable(config: Any, model_config: Any) -> None:
    """Refuse a budget no recipe of the space can meet where the stored size bounds its figure
    from below (:attr:`HardwareBudget.floor`), saying what the smallest model needs."""
    given = [b for b in BUDGETS if b.floor and b.key in config.budgets]
    if not given:
        return
    smallest, corner = smallest_size_bytes(model_config, config.search)
    for budget in given:
        limit = config.budgets[budget.key]
        if limit < smallest:
            raise ConfigError(
                f"{config.path}: budgets.{budget.key}: {format_bytes(limit)} is below what "
                f"{budget.floor} (at least {format_bytes(smallest)}: {corner}); raise the "
                "budget or widen [search] (more bits options, pruning, dropped layers)"
            )
