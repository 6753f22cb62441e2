"""``[tasks.NAME]`` tables: one validated :class:`TaskSpec` per task evaluation."""

from __future__ import annotations

import ast
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# A task's absolute bounds: the ``[tasks.NAME]`` key and the bound it sets on the score; pick
# and export tighten them (``--task-at-least NAME=VALUE``: ``autoslim.search.budgets``).
TASK_BOUNDS = {"at_least": "min", "at_most": "max"}

GOALS = ("max", "min")


@dataclass(frozen=True)
class TaskSpec:
    """One task evaluation. Exactly one of ``harness`` (an lm-evaluation-harness task name)
    and ``function`` (``/path/file.py:function``) is set."""

    name: str
    harness: str = ""
    include_path: str = ""  # a folder of local task YAMLs (absolute)
    function: str = ""  # absolute FILE.py:function
    metric: str = ""  # which metric of the results; "" = acc (harness) / the only key
    goal: str = "max"  # "max": higher is better
    limit: int | None = None  # at most this many examples (harness)
    batch_size: int = 8
    num_fewshot: int = 0
    max_relative_loss: float | None = None  # at most this fraction worse than the base
    at_least: float | None = None
    at_most: float | None = None

    @property
    def constrained(self) -> bool:
        return any(v is not None for v in (self.max_relative_loss, self.at_least, self.at_most))

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "name"}

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> TaskSpec:
        return cls(name=name, **data)

    def describe(self) -> str:
        what = f"lm-eval {self.harness}" if self.harness else f"function {self.function}"
        return f"{self.name} ({what}, {self.metric or 'default metric'}, goal {self.goal})"


def parse_tasks(table: Any, reserved: tuple[str, ...]) -> dict[str, TaskSpec]:
    """Read the ``[tasks]`` table (a config ``_Table``); task names may not shadow a
    measurement figure (``reserved``)."""
    table.read.update(table.data)
    out = {}
    for name in table.data:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
            raise table.error(name, "a task name: letters, digits and '_', starting with a letter")
        if name in reserved:
            raise table.error(name, f"{name!r} is a measured figure; give the task another name")
        out[name] = _task(table.table(name), name)
    return out


def _task(t: Any, name: str) -> TaskSpec:
    base = Path(t.where).parent
    harness = t.get("harness", str, "")
    include = t.get("include_path", str, "")
    function = t.get("function", str, "")
    if bool(harness) == bool(function):
        raise t.error(
            "harness",
            'set exactly one of harness = "TASK" (lm-evaluation-harness) or '
            'function = "FILE.py:function" (your own code)',
        )
    if include:
        folder = Path(include) if Path(include).is_absolute() else base / include
        if not folder.is_dir():
            raise t.error("include_path", f"{include!r} is not a folder (relative to the study)")
        include = str(folder.resolve())
    if function:
        function = _function(t, base, function)
    goal = t.get("goal", str, "max")
    if goal not in GOALS:
        raise t.error("goal", f'{goal!r}: write "max" (higher is better) or "min"')
    limit = t.get("limit", int, None)
    if limit is not None and limit < 1:
        raise t.error("limit", f"{limit}: at least 1 example")
    batch = t.get("batch_size", int, 8)
    if batch < 1:
        raise t.error("batch_size", f"{batch}: at least 1")
    fewshot = t.get("num_fewshot", int, 0)
    if fewshot < 0:
        raise t.error("num_fewshot", f"{fewshot}: must be >= 0")
    bounds = {k: t.get(k, float, None) for k in ("max_relative_loss", *TASK_BOUNDS)}
    for key, value in bounds.items():
        if value is not None and not math.isfinite(value):
            raise t.error(key, f"{value!r}: must be a finite number")
    loss = bounds["max_relative_loss"]
    if loss is not None and not 0 <= loss < 1:
        raise t.error("max_relative_loss", f"{loss!r}: a fraction in [0, 1), e.g. 0.05 = -5 %")
    if sum(v is not None for v in bounds.values()) > 1:
        raise t.error(
            "max_relative_loss",
            f"give one of max_relative_loss, {' and '.join(TASK_BOUNDS)} per task",
        )
    metric = t.get("metric", str, "")
    t.finish()
    if include and not harness:
        raise t.error("include_path", 'only with harness = "TASK"')
    return TaskSpec(
        name=name,
        harness=harness,
        include_path=include,
        function=function,
        metric=metric,
        goal=goal,
        limit=limit,
        batch_size=batch,
        num_fewshot=fewshot,
        **bounds,
    )


def _function(t: Any, base: Path, text: str) -> str:
    """``FILE.py:function``, the file resolved against the study file and checked to define
    the function (parsed, not run: importing it is the trial's job)."""
    path, sep, attribute = text.rpartition(":")
    if not sep or not path.endswith(".py") or not attribute.isidentifier():
        raise t.error("function", f'{text!r}: write "FILE.py:function" (relative to the study)')
    file = Path(path) if Path(path).is_absolute() else base / path
    if not file.is_file():
        raise t.error("function", f"{path!r} is not a file (paths are relative to the study)")
    try:
        tree = ast.parse(file.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError) as e:
        raise t.error("function", f"{path!r} cannot be parsed ({type(e).__name__}: {e})") from e
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    assigned = {
        target.id
        for n in tree.body
        if isinstance(n, ast.Assign)
        for target in n.targets
        if isinstance(target, ast.Name)
    }
    if attribute not in defined | assigned:
        raise t.error("function", f"{path!r} defines no {attribute!r}; name a function in it")
    return f"{file.resolve()}:{attribute}"


def unused(tasks: dict[str, TaskSpec], objectives: tuple[str, ...]) -> list[str]:
    return [n for n, s in tasks.items() if n not in objectives and not s.constrained]


__all__ = ["GOALS", "TaskSpec", "parse_tasks"]
