"""Study files: ``studies/NAME.toml`` parsed into a validated, frozen :class:`StudyConfig`.

Every check runs before any storage file or study exists. Errors name the key path
(``search.prune_ratio.high``), the value, and the fix. Head indices are checked against the
model's config (no weights are loaded); a storage URL holding a password is refused and never
echoed back.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from autoslim import precisions
from autoslim.errors import ConfigError, ModelError
from autoslim.objectives import DEFAULT_OBJECTIVES, OBJECTIVES
from autoslim.precisions import PRECISIONS
from autoslim.recipe import KNOBS, Recipe
from autoslim.search.budgets import BY_KEY as BUDGET_KEYS
from autoslim.search.budgets import parse_bytes
from autoslim.tasks.spec import TaskSpec, parse_tasks, unused
from autoslim.urls import SCHEMES, mask_url, parse_url, scheme_of, url_credentials

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    try:
        import tomli as tomllib
    except ImportError as e:
        raise ImportError("Python 3.10 needs the 'tomli' package: pip install tomli") from e

logger = logging.getLogger(__name__)

SAMPLERS = ("tpe", "nsga2", "random", "grid")
# [search] knobs a study derives when its file leaves them out, once per study (stored as its
# ``derived_search`` attr, so every worker and every resume searches the same space): from the
# device of the worker that creates the study (every precision it computes natively), and, in
# a study with a time limit, from the costs that worker measures
# (:meth:`autoslim.search.costs.CostModel.derived_kd_steps`).
FROM_DEVICE = ("runtime", "precision")
FROM_COSTS = ("kd_steps",)
DERIVABLE = (*FROM_DEVICE, *FROM_COSTS)
# Figures a task may not be named after.
FIGURES = (*OBJECTIVES, *(b.figure for b in BUDGET_KEYS.values()))


@dataclass(frozen=True)
class Range:
    """A numeric range to sample from: ``{ low = .., high = .., step = .., log = .. }``."""

    low: float
    high: float
    step: float | None = None
    log: bool = False
    integer: bool = False

    def grid(self) -> list[float | int]:
        """Every value the range can take (needs a step, or integer bounds)."""
        step = self.step or 1
        count = math.floor((self.high - self.low) / step + 1e-9) + 1
        values = [self.low + i * step for i in range(count)]
        if self.integer:
            return [round(v) for v in values]
        return [round(v, 10) for v in values]


@dataclass(frozen=True)
class SearchedKnob:
    """What a study searches for one knob: a list of choices (one choice = fixed) or a range."""

    name: str
    choices: tuple[Any, ...] = ()
    range: Range | None = None

    @property
    def fixed(self) -> bool:
        return self.range is None and len(self.choices) == 1

    def values(self) -> list[Any]:
        """All values, for grid search; a float range without a step cannot be listed."""
        return self.range.grid() if self.range is not None else list(self.choices)

    def extremes(self) -> list[Any]:
        if self.range is not None:
            grid_high = self.range.grid()[-1] if self.range.step else self.range.high
            return [self.range.low, grid_high]
        return list(self.choices)

    def to_dict(self) -> Any:
        if self.range is not None:
            out: dict[str, Any] = {"low": self.range.low, "high": self.range.high}
            if self.range.step is not None:
                out["step"] = self.range.step
            if self.range.log:
                out["log"] = True
            return out
        return list(self.choices)


@dataclass(frozen=True)
class SearchSpace:
    knobs: dict[str, SearchedKnob]

    def __getitem__(self, name: str) -> SearchedKnob:
        return self.knobs[name]

    def to_dict(self) -> dict[str, Any]:
        return {name: knob.to_dict() for name, knob in self.knobs.items()}


@dataclass(frozen=True)
class ModelSection:
    """``dtype``: what the base model is loaded and measured in (``auto``: a 16-bit model in
    the 16-bit type the device computes natively, an fp32 model in fp32). ``max_memory``: the
    most resident memory, in bytes, the trial worker process may hold (base model, teacher
    cache and the trial's model together); a trial that goes over it is stopped and recorded
    FAIL with the figure (:class:`autoslim.search.worker.Worker`)."""

    name: str = "reference"
    trust_remote_code: bool = False
    device: str = "cpu"
    dtype: str = "auto"
    max_memory: int | None = None


@dataclass(frozen=True)
class DataSection:
    text: tuple[str, ...] = ()
    dataset: str = ""


@dataclass(frozen=True)
class EarlyAbort:
    """Abandon a recipe whose perplexity after the cheap stages (structured prune, drop heads)
    exceeds ``max_ppl_ratio`` × the base model's, measured on ``windows`` eval windows (None:
    derived from the measured cost model, :func:`autoslim.search.costs.early_abort_windows`)."""

    enabled: bool = True
    max_ppl_ratio: float = 4.0
    windows: int | None = None


@dataclass(frozen=True)
class RunSection:
    """``trial_timeout_seconds``: a trial's limit on its own clock (CPU wait excluded,
    :class:`autoslim.search.costs.TrialClock`); None: derived per trial from the measured costs."""

    name: str
    storage: str
    n_trials: int | None = 20
    time_limit_seconds: float | None = None
    sampler: str = "tpe"
    seed: int = 0
    population_size: int = 8
    startup_trials: int = 4
    trial_timeout_seconds: float | None = None
    recycle_every: int = 25
    heartbeat_seconds: int = 10


@dataclass(frozen=True)
class StudyConfig:
    """A validated study file. ``to_dict`` is what the study stores as its ``config`` attr."""

    path: str
    study: RunSection
    model: ModelSection
    data: DataSection
    workload: dict[str, Any]
    objectives: tuple[str, ...]
    max_ppl_increase: float
    early_abort: EarlyAbort
    search: SearchSpace = field(default_factory=lambda: SearchSpace({}))
    budgets: dict[str, float] = field(default_factory=dict)  # [budgets] key -> limit
    tasks: dict[str, TaskSpec] = field(default_factory=dict)
    # DERIVABLE knobs the file left out: ``search`` holds this machine's defaults until the
    # study's stored derivation replaces them (:meth:`with_derived`).
    derive: tuple[str, ...] = ()

    @property
    def directions(self) -> list[Literal["minimize", "maximize"]]:
        """Optuna's direction of each objective: a task's goal, else minimise."""
        return [
            "maximize" if n in self.tasks and self.tasks[n].goal == "max" else "minimize"
            for n in self.objectives
        ]

    def with_derived(self, derived: Mapping[str, list[Any]]) -> StudyConfig:
        """This config with the ``derive`` knobs' choices set to ``derived`` (what the study
        derived and stored); the others as the file says."""
        knobs = dict(self.search.knobs)
        for name in self.derive:
            if name in derived:
                knobs[name] = SearchedKnob(name, choices=tuple(derived[name]))
        return replace(self, search=SearchSpace(knobs))

    def to_dict(self) -> dict[str, Any]:
        return {
            "study": {**asdict(self.study), "storage": mask_url(self.study.storage)},
            "model": asdict(self.model),
            "data": {"text": list(self.data.text), "dataset": self.data.dataset},
            "workload": dict(self.workload),
            "objectives": {
                "names": list(self.objectives),
                "max_ppl_increase": self.max_ppl_increase,
            },
            "early_abort": asdict(self.early_abort),
            "search": self.search.to_dict(),
            "budgets": dict(self.budgets),
            "tasks": {name: spec.to_dict() for name, spec in self.tasks.items()},
            "derive": list(self.derive),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: str = "") -> StudyConfig:
        """The config a study stored (its ``config`` attr, written by :meth:`to_dict`).

        It was validated when the study was created, so files and the model are not checked
        again (they may live on another machine); a record that is not such a dict is refused.
        """
        try:
            objectives = data["objectives"]
            stored = data["search"]
            # A knob declared after the study was made was fixed at its default then.
            search = {
                name: SearchedKnob(name, range=Range(**value, integer=declared.type is int))
                if isinstance(value, dict)
                else SearchedKnob(name, choices=tuple(value))
                for name, declared in KNOBS.items()
                for value in [stored.get(name, [declared.to_param(declared.default)])]
            }
            return cls(
                path=path,
                study=RunSection(**data["study"]),
                model=ModelSection(**data["model"]),
                data=DataSection(
                    text=tuple(data["data"]["text"]), dataset=data["data"]["dataset"]
                ),
                workload=dict(data["workload"]),
                objectives=tuple(objectives["names"]),
                max_ppl_increase=float(objectives["max_ppl_increase"]),
                early_abort=EarlyAbort(**data["early_abort"]),
                search=SearchSpace(search),
                budgets={k: float(v) for k, v in data.get("budgets", {}).items()},
                tasks={n: TaskSpec.from_dict(n, v) for n, v in data.get("tasks", {}).items()},
                derive=tuple(data.get("derive", ())),
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise ConfigError(
                f"the stored study config is not one `autoslim search` wrote "
                f"({type(e).__name__}: {e}); open the study with the autoslim that created it"
            ) from e


class _Table:
    """A TOML table being read: tracks its key path and refuses keys nobody read."""

    def __init__(self, data: Mapping[str, Any], path: str, where: str) -> None:
        self.data = dict(data)
        self.path = path
        self.where = where
        self.read: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(f"{self.where}: {self.key(name)}: {message}")

    def get(self, name: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self.read.add(name)
        if name not in self.data:
            return default
        value = self.data[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python; TOML keeps them apart, so do we.
        wrong = isinstance(value, bool) and bool not in kinds
        if wrong or not isinstance(value, kinds):
            names = " or ".join(_type_name(k) for k in kinds)
            raise self.error(name, f"{value!r} is {_type_name(type(value))}; write {names}")
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value

    def field(self, section: type, name: str, kind: type | tuple[type, ...]) -> Any:
        """Key ``name`` of this table, defaulting to the field of dataclass ``section`` it
        fills (the one place a study-file default is written)."""
        default = next(f.default for f in fields(section) if f.name == name)
        return self.get(name, kind, default)

    def table(self, name: str) -> _Table:
        self.read.add(name)
        value = self.data.get(name, {})
        if not isinstance(value, dict):
            raise self.error(name, f"must be a table ([{self.key(name)}]), not {value!r}")
        return _Table(value, self.key(name), self.where)

    def finish(self, known: tuple[str, ...] | None = None) -> None:
        unknown = sorted(set(self.data) - self.read)
        if unknown:
            allowed = ", ".join(sorted(known if known is not None else self.read))
            raise self.error(
                unknown[0], f"unknown key; check the spelling (known keys: {allowed})"
            )


def _type_name(kind: type) -> str:
    return {
        bool: "a boolean (true/false)",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(kind, kind.__name__)


def load(
    path: str | Path,
    *,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    check_model: bool = True,
) -> StudyConfig:
    """Read and validate a study file; nothing is created on disk.

    ``overrides`` replaces keys per table before validation, e.g.
    ``{"study": {"n_trials": 5}}`` (how CLI flags take precedence over the file).
    """
    file = Path(path)
    where = str(path)
    if not file.is_file():
        raise ConfigError(f"study file {where!r} does not exist; pass a studies/NAME.toml file")
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8-sig"))  # a BOM some editors write
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{where}: cannot read the file ({e})") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where}: not valid TOML ({e}); fix the syntax there") from e
    if not raw:
        # An empty file is a mistake (a truncated copy, the wrong path), not a wish for a
        # 20-trial study with no time limit on the default model: say so instead of guessing.
        raise ConfigError(
            f"{where}: the study file is empty; set at least [study] n_trials or "
            "time_limit_seconds and [model] name (copy studies/demo.toml to start)"
        )
    for table, values in (overrides or {}).items():
        current = raw.get(table, {})
        raw[table] = {**(current if isinstance(current, dict) else {}), **values}
    return parse(raw, file, check_model=check_model)


def parse(raw: Mapping[str, Any], file: Path, *, check_model: bool = True) -> StudyConfig:
    """Validate a study file's parsed TOML; ``file`` locates the default storage."""
    root = _Table(raw, "", str(file))
    run = _run_section(root.table("study"), file)
    model = _model_section(root.table("model"))
    data = _data_section(root.table("data"))
    workload = _workload(root.table("workload"))
    tasks = parse_tasks(root.table("tasks"), FIGURES)
    objectives, max_increase = _objectives(root.table("objectives"), tuple(tasks))
    idle = unused(tasks, objectives)
    if idle:
        raise root.error(
            f"tasks.{idle[0]}",
            "is neither an objective nor a constraint; list it in objectives.names or give "
            "it max_relative_loss / at_least / at_most",
        )
    budgets = _budgets(root.table("budgets"), workload)
    early = _early_abort(root.table("early_abort"))
    search_table = root.table("search")
    search = _search(search_table, model.device, tasks=bool(tasks))
    root.finish()
    derive = tuple(
        k
        for k in DERIVABLE
        if k not in search_table.data
        # without a time limit there is nothing to derive a trial's length from
        and (k not in FROM_COSTS or run.time_limit_seconds is not None)
    )
    config = StudyConfig(
        path=str(file),
        study=run,
        model=model,
        data=data,
        workload=workload,
        objectives=objectives,
        max_ppl_increase=max_increase,
        early_abort=early,
        search=search,
        budgets=budgets,
        tasks=tasks,
        derive=derive,
    )
    if check_model:
        config = check_against_model(config)
        from autoslim.tasks.run import check_reachable

        check_reachable(config.tasks)
    return config


def _positive(table: _Table, name: str, value: float | None, *, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if value is None or not value > 0 or not math.isfinite(value):
        raise table.error(name, f"{value!r}: must be a positive number")


# What a study name may be made of (it names the study in its storage and its default file).
STUDY_NAME = re.compile(r"[A-Za-z0-9_.-]+")
# Files are named after it (NAME.toml, NAME.db, NAME.db.backup-STAMP-wal, report-NAME.html,
# a journal's NAME.log.lock<uuid>…): with this many characters the longest still fits the
# 255 bytes a file name may have.
MAX_STUDY_NAME = 128


def study_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a study (None when it can)."""
    if not STUDY_NAME.fullmatch(name):
        return f"{name!r}: use letters, digits, '-', '_' or '.' only"
    if len(name) > MAX_STUDY_NAME:
        return (
            f"{name[:20]!r}… is {len(name)} characters; at most {MAX_STUDY_NAME}, so the files "
            "named after it (NAME.db.backup-…, report-NAME.html) fit the file system"
        )
    return None


def _run_section(t: _Table, file: Path) -> RunSection:
    name = t.get("name", str, file.stem)
    if (problem := study_name_problem(name)) is not None:
        raise t.error("name", problem)
    storage = t.get("storage", str, "")
    n_trials = t.field(RunSection, "n_trials", int)
    time_limit = t.field(RunSection, "time_limit_seconds", (int, float))
    if n_trials < 0:
        raise t.error("n_trials", f"{n_trials}: must be >= 0 (0 = no limit, stop on the time)")
    _positive(t, "time_limit_seconds", time_limit)
    if n_trials == 0:
        if time_limit is None:
            raise t.error("n_trials", "is 0 and no time_limit_seconds is set; set one of them")
        n_trials = None
    sampler = t.field(RunSection, "sampler", str)
    if sampler not in SAMPLERS:
        raise t.error("sampler", f"{sampler!r}: choose one of {', '.join(SAMPLERS)}")
    seed = t.field(RunSection, "seed", int)
    population = t.field(RunSection, "population_size", int)
    if population < 2:
        raise t.error("population_size", f"{population}: NSGA-II needs at least 2")
    startup = t.field(RunSection, "startup_trials", int)
    if startup < 0:
        raise t.error("startup_trials", f"{startup}: must be >= 0")
    trial_timeout = t.field(RunSection, "trial_timeout_seconds", (int, float))
    _positive(t, "trial_timeout_seconds", trial_timeout)
    recycle = t.field(RunSection, "recycle_every", int)
    if recycle < 0:
        raise t.error("recycle_every", f"{recycle}: must be >= 0 (0 = never recycle)")
    heartbeat = t.field(RunSection, "heartbeat_seconds", int)
    if heartbeat < 1:
        raise t.error("heartbeat_seconds", f"{heartbeat}: must be >= 1")
    t.finish()
    return RunSection(
        name=name,
        storage=_storage(t, storage, file, name),
        n_trials=n_trials,
        time_limit_seconds=time_limit,
        sampler=sampler,
        seed=seed,
        population_size=population,
        startup_trials=startup,
        trial_timeout_seconds=trial_timeout,
        recycle_every=recycle,
        heartbeat_seconds=heartbeat,
    )


def _storage(t: _Table, url: str, file: Path, name: str) -> str:
    """The storage URL, checked without creating anything (SQLite beside the study file; a
    relative file path is relative to the study file's folder, not the current one)."""
    from autoslim.search import integrity

    if not url:
        url = "sqlite:///" + str((file.parent / f"{name}.db").absolute())
    kind = SCHEMES.get(scheme_of(url))
    if kind is not None and kind.file and url.startswith(kind.prefix):
        given = url.removeprefix(kind.prefix)
        if given and given != ":memory:" and not Path(given).expanduser().is_absolute():
            url = kind.prefix + str((file.parent / given).absolute())
    parsed = parse_url(url)
    if parsed is None:
        raise t.error(
            "storage",
            f"{mask_url(url)!r} is not a database URL (a port must be a number); write "
            "sqlite:///FILE.db or postgresql://USER@HOST:5432/DB",
        )
    credentials = url_credentials(url)
    if credentials:
        raise t.error(
            "storage",
            f"{mask_url(url)!r} holds a credential ({', '.join(credentials)}); study files "
            "get shared, so remove it from the URL and give it to the database client "
            "instead (PGPASSWORD, a passfile or ~/.pgpass for PostgreSQL)",
        )
    scheme = scheme_of(url)
    if scheme not in SCHEMES:
        kinds = ", ".join(f"{s.example} ({s.use})" for s in SCHEMES.values())
        raise t.error("storage", f"{mask_url(url)!r}: use one of {kinds}")
    if SCHEMES[scheme].file:
        db = url.removeprefix(SCHEMES[scheme].prefix)
        if not url.startswith(SCHEMES[scheme].prefix) or not db or db == ":memory:":
            raise t.error(
                "storage",
                f"{url!r}: write {SCHEMES[scheme].example} (a file, so the study survives)",
            )
        target = Path(db)
        parent = target.parent
        if target.is_dir():
            raise t.error("storage", f"{db!r} is a folder; name a database file inside it")
        if target.exists() and not target.is_file():
            raise t.error(
                "storage",
                f"{db!r} is not a regular file (a device, pipe or socket"
                + (
                    f", through the link to {os.path.realpath(target)!r}"
                    if target.is_symlink()
                    else ""
                )
                + "); name a database file",
            )
        if target.exists():
            if not os.access(target, os.R_OK | os.W_OK):
                raise t.error("storage", f"{db!r} exists but is not writable; fix permissions")
        elif not parent.is_dir():
            raise t.error(
                "storage", f"folder {str(parent)!r} does not exist; create it or change the path"
            )
        elif (why := integrity.writable_folder(parent)) is not None:
            raise t.error(
                "storage",
                f"folder {str(parent)!r} is not writable ({why}); choose a writable folder",
            )
    return url


def _model_section(t: _Table) -> ModelSection:
    section = ModelSection(
        name=t.field(ModelSection, "name", str),
        trust_remote_code=t.field(ModelSection, "trust_remote_code", bool),
        device=t.field(ModelSection, "device", str),
        dtype=t.field(ModelSection, "dtype", str),
        max_memory=_max_memory(t),
    )
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", section.device):
        raise t.error("device", f"{section.device!r}: write cpu, cuda, cuda:N or mps")
    if section.dtype not in ("auto", *PRECISIONS):
        raise t.error("dtype", f"{section.dtype!r}: choose auto, {', '.join(PRECISIONS)}")
    t.finish()
    return section


def _max_memory(t: _Table) -> int | None:
    value = t.field(ModelSection, "max_memory", (str, int, float))
    if value is None:
        return None
    try:
        limit = parse_bytes(value)
    except ValueError as e:
        raise t.error("max_memory", str(e)) from None
    if limit <= 0:
        raise t.error("max_memory", f"{value!r} must be above 0; write e.g. 8GB")
    return int(limit)


def _data_section(t: _Table) -> DataSection:
    text = t.get("text", list, [])
    if not all(isinstance(p, str) for p in text):
        raise t.error("text", "must be a list of file paths (strings)")
    dataset = t.field(DataSection, "dataset", str)
    if text and dataset:
        raise t.error("dataset", "give either data.text or data.dataset, not both")
    t.finish()
    base = Path(t.where).parent
    resolved = tuple(str(p if Path(p).is_absolute() else base / p) for p in text)
    for given, path in zip(text, resolved, strict=True):
        if not Path(path).is_file():
            raise t.error("text", f"{given!r} is not a file (paths are relative to the study)")
    return DataSection(text=resolved, dataset=dataset)


def _workload(t: _Table) -> dict[str, Any]:
    """The [workload] table, checked by the measurement module's own ``Workload``."""
    t.read.update(t.data)
    workload = dict(t.data)
    if workload:
        from autoslim.protocol import Workload

        try:
            Workload.from_dict(workload)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{t.where}: workload: {e}") from e
    return workload


def _objectives(t: _Table, tasks: tuple[str, ...]) -> tuple[tuple[str, ...], float]:
    names = t.get("names", list, list(DEFAULT_OBJECTIVES))
    known = (*OBJECTIVES, *tasks)
    if not names:
        raise t.error("names", "is empty; list at least one of " + ", ".join(known))
    for name in names:
        if name not in known:
            raise t.error(
                "names", f"{name!r}: choose from {', '.join(known)} (or declare [tasks.{name}])"
            )
    if len(set(names)) != len(names):
        raise t.error("names", f"{names!r} repeats an objective")
    if "perplexity" not in names:
        raise t.error("names", "must include 'perplexity' (the constraint is on it)")
    increase = t.get("max_ppl_increase", float, 0.2)
    if not (math.isfinite(increase) and increase >= 0):
        raise t.error(
            "max_ppl_increase",
            f"{increase!r}: the allowed relative increase over the base model, e.g. 0.2 = +20%",
        )
    t.finish()
    return tuple(names), increase


def _budgets(t: _Table, workload: dict[str, Any]) -> dict[str, float]:
    """The ``[budgets]`` table: each key one declared :data:`autoslim.search.budgets.BUDGETS`."""
    from autoslim.protocol import Workload

    out = {}
    for key, budget in BUDGET_KEYS.items():
        t.read.add(key)
        if key not in t.data:
            continue
        try:
            out[key] = budget.parse(t.data[key])
        except ValueError as e:
            raise t.error(key, f"{e} ({budget.doc})") from e
    t.finish(tuple(BUDGET_KEYS))
    load = Workload.from_dict(workload)
    idle = {
        "min_prefill_tokens_per_second": ("prefill_windows", load.prefill_windows),
        "min_decode_tokens_per_second": ("decode_tokens", load.decode_tokens),
    }
    for key, (what, count) in idle.items():
        if key in out and count == 0:
            raise t.error(
                key, f"nothing measures it: workload.{what} is 0; set it above 0 or drop {key}"
            )
    return out


def _early_abort(t: _Table) -> EarlyAbort:
    section = EarlyAbort(
        enabled=t.field(EarlyAbort, "enabled", bool),
        max_ppl_ratio=t.field(EarlyAbort, "max_ppl_ratio", float),
        windows=t.field(EarlyAbort, "windows", int),
    )
    if not (math.isfinite(section.max_ppl_ratio) and section.max_ppl_ratio > 1):
        raise t.error(
            "max_ppl_ratio",
            f"{section.max_ppl_ratio!r}: must be > 1 (times the base perplexity, e.g. 4)",
        )
    if section.windows is not None and section.windows < 1:
        raise t.error("windows", f"{section.windows}: must be at least 1")
    t.finish()
    return section


def default_search(device: str = "cpu") -> dict[str, Any]:
    """The ``[search]`` table a study gets for keys it leaves out (from the declarations)."""
    return {name: knob.default_search(device) for name, knob in KNOBS.items()}


def _search(t: _Table, device: str, *, tasks: bool = False) -> SearchSpace:
    defaults = default_search(device)
    if tasks:  # task evaluations wrap a transformers model: the torch runtime's
        defaults["runtime"] = ["torch"]
    knobs = {name: _knob(t, name, defaults[name]) for name in KNOBS}
    t.finish(tuple(KNOBS))
    if "runtime" in t.data and tasks and knobs["runtime"].values() != ["torch"]:
        raise t.error(
            "runtime",
            f"{knobs['runtime'].values()}: task evaluations ([tasks]) run on the torch "
            'runtime only; set search.runtime = ["torch"] or drop the tasks',
        )
    heads = [v for v in knobs["drop_heads"].values() if v]
    per_layer = [v for v in knobs["drop_heads_per_layer"].extremes() if v]
    if heads and per_layer:
        raise t.error(
            "drop_heads",
            "search.drop_heads and search.drop_heads_per_layer both drop heads; use one "
            '(set the other to [""] or [0])',
        )
    _check_used(t, SearchSpace(knobs))
    return SearchSpace(knobs)


def runtime_problem(name: str, device: str) -> str | None:
    """None when runtime ``name`` is installed and runs on ``device``, else why not."""
    from autoslim.runtimes import RUNTIMES

    runtime = RUNTIMES[name]
    if device.split(":", 1)[0] not in runtime.devices:
        return f"{name} runs on {', '.join(runtime.devices)}, not {device}"
    return runtime.available()


def check_device(config: StudyConfig) -> None:
    """Refuse a precision or runtime the study file lists that this device cannot run: a
    precision it would only emulate (slower than fp32), a runtime not installed here."""
    device = config.model.device
    for value in [] if "precision" in config.derive else config.search["precision"].values():
        reason = precisions.why_not(value, device)
        if reason is not None:
            native = ", ".join(precisions.supported(device))
            raise ConfigError(
                f"{config.path}: search.precision: {value!r} on {device}: {reason}; this "
                f"device computes {native} natively: list only those, or leave "
                "search.precision out to search every precision the device computes"
            )
    for value in [] if "runtime" in config.derive else config.search["runtime"].values():
        reason = runtime_problem(value, device)
        if reason is not None:
            raise ConfigError(f"{config.path}: search.runtime: {value!r}: {reason}")


def _check_used(t: _Table, space: SearchSpace) -> None:
    """Refuse a knob the file sets that no recipe of the space uses (a runtime's own knob
    under another runtime, a bitsandbytes setting without bitsandbytes): it would be stored
    with every trial and change nothing."""
    used = {name for recipe in extreme_recipes(space) for name in recipe.active_params()}
    for name in t.data:
        default = [KNOBS[name].to_param(KNOBS[name].default)]
        if name not in used and space[name].to_dict() != default:
            raise t.error(
                name,
                f"no recipe of this space uses it ({KNOBS[name].doc}); drop it, or add to the "
                "space what it needs",
            )


def _knob(t: _Table, name: str, default: Any) -> SearchedKnob:
    value = t.data.get(name, default)
    t.read.add(name)
    declared = KNOBS[name]
    key = t.key(name)
    if isinstance(value, dict):
        if not declared.rangeable:
            raise t.error(name, f"takes a list of choices ({declared.allowed()}), not a range")
        table = _Table(value, key, t.where)
        return SearchedKnob(name, range=_range(table, name, declared.type is int))
    choices = value if isinstance(value, list) else [value]
    if not choices:
        raise t.error(name, f"is an empty list; give at least one value, e.g. {default!r}")
    checked = [_check_value(t, name, f"{key}[{i}]", c) for i, c in enumerate(choices)]
    if len(set(checked)) != len(checked):
        raise t.error(name, f"{choices!r} repeats a choice")
    return SearchedKnob(name, choices=tuple(checked))


def _range(t: _Table, name: str, integer: bool) -> Range:
    number: tuple[type, ...] = (int,) if integer else (int, float)
    low = t.get("low", number, None)
    high = t.get("high", number, None)
    step = t.get("step", number, None)
    log = t.get("log", bool, False)
    t.finish(("low", "high", "step", "log"))
    for bound, value in (("low", low), ("high", high)):
        if value is None:
            raise t.error(bound, "is missing; a range needs low and high")
        _check_value(t, bound, t.key(bound), value, field_name=name)
    assert low is not None and high is not None
    if low > high:
        raise t.error("high", f"{high} is below low={low}; swap them")
    if low == high:
        raise t.error("high", f"equals low={low}: the range is empty; write {name} = [{low}]")
    if step is not None:
        if not step > 0:
            raise t.error("step", f"{step}: must be > 0")
        if step > high - low:
            raise t.error(
                "step", f"{step} is wider than the range {low}..{high}; use a smaller step"
            )
        if log:
            raise t.error("log", "a range cannot have both a step and log = true; drop one")
        count = (high - low) / step
        if abs(count - round(count)) > 1e-9 * max(1.0, count):
            last = low + math.floor(count) * step
            raise t.error(
                "step",
                f"{step} does not divide the range {low}..{high} (the sampler would cut it to "
                f"{low}..{last:.12g}); use a step that divides {high - low:.12g}, or high = "
                f"{last:.12g}",
            )
    if log and low <= 0:
        raise t.error("low", f"{low}: a log range needs low > 0")
    return Range(low=low, high=high, step=step, log=log, integer=integer)


def _check_value(t: _Table, name: str, key: str, value: Any, field_name: str = "") -> Any:
    """Check one value through the declared knob's own validation, reported at ``key``;
    return it as the flat param the study stores."""
    knob = KNOBS[field_name or name]
    try:
        return knob.to_param(knob.check(value))
    except ConfigError as e:
        raise ConfigError(f"{t.where}: {key}: {e}") from e


def check_against_model(config: StudyConfig) -> StudyConfig:
    """Check the listed precisions and runtimes run on this device (:func:`check_device`),
    the workload fits the model's context, and ask every operator whether the space's
    extreme recipes can be built for this model on this device (its config only; no weights
    are loaded). A precision the file left out is searched in every precision the device
    computes natively that the rest of the space can be built in: the config returned."""
    check_device(config)
    from autoslim import models

    try:
        model_config = models.load_config(
            config.model.name, trust_remote_code=config.model.trust_remote_code
        )
    except ModelError as e:
        raise ConfigError(f"{config.path}: model.name: {e}") from e
    from autoslim.protocol import Workload

    try:
        Workload.from_dict(config.workload).check_context(model_config)
    except ConfigError as e:
        raise ConfigError(f"{config.path}: {e} ({config.model.name})") from e
    if "precision" in config.derive:
        config = _buildable_precisions(config, model_config)
    _check_recipes(config, model_config)
    from autoslim.search.budgets import check_reachable as check_budgets

    check_budgets(config, model_config)
    return config


def extreme_recipes(space: SearchSpace) -> list[Recipe]:
    """The recipes at the corners of ``space`` that decide whether all of it can be built:
    every combination of the categorical knobs that matter together (a knob is varied only
    where it is active, as a sampler chooses them: a runtime's own knobs under that runtime
    alone), at the largest prune and layer drop (the narrowest shapes), and every explicit
    head list."""
    largest = {n: max(space[n].extremes()) for n in space.knobs if KNOBS[n].extreme}
    out: list[Recipe] = []
    names = list(KNOBS)

    def walk(i: int, chosen: dict[str, Any]) -> None:
        if i == len(names):
            recipe = Recipe.from_params(chosen)
            if recipe not in out:
                out.append(recipe)
            return
        name = names[i]
        if not KNOBS[name].active(chosen):
            walk(i + 1, chosen)
            return
        if name in largest:
            values = [largest[name]]
        elif space[name].range is not None:
            values = []  # a range of a knob that shapes nothing: its default stands in
        elif name == "drop_heads_per_layer" and chosen.get("drop_heads"):
            values = [0]  # an explicit head list drops heads alone
        else:
            values = space[name].values()
        for value in values:
            walk(i + 1, {**chosen, name: value})
        if not values:
            walk(i + 1, chosen)

    walk(0, {})
    return out


def _buildable_precisions(config: StudyConfig, model_config: Any) -> StudyConfig:
    """``config`` searching only the native precisions every extreme recipe builds in (fp16 is
    native on an AVX512-FP16 CPU, but torchao's int8 kernels overflow in it)."""
    from autoslim.build import validate
    from autoslim.errors import UnsupportedError

    knobs = dict(config.search.knobs)
    kept = []
    for value in knobs["precision"].values():
        knobs["precision"] = SearchedKnob("precision", choices=(value,))
        try:
            for recipe in extreme_recipes(SearchSpace(knobs)):
                validate(recipe, model_config, config.model.device)
        except (ConfigError, UnsupportedError) as e:
            logger.info("search.precision: %s left out of the derived space: %s", value, e)
            continue
        kept.append(value)
    knobs["precision"] = SearchedKnob("precision", choices=tuple(kept or ["fp32"]))
    return replace(config, search=SearchSpace(knobs))


def _check_recipes(config: StudyConfig, model_config: Any) -> None:
    from autoslim.build import validate
    from autoslim.errors import UnsupportedError

    for recipe in extreme_recipes(config.search):
        try:
            validate(recipe, model_config, config.model.device)
        except (ConfigError, UnsupportedError) as e:
            raise ConfigError(
                f"{config.path}: search: the recipe '{recipe.describe()}' cannot be "
                f"built for {config.model.name} on {config.model.device}: {e}"
            ) from e


def base_recipe(config: StudyConfig) -> Recipe:
    """The recipe that is the base model as the study loads it (its precision, nothing else)."""
    from autoslim import models

    model = config.model
    return Recipe(
        precision=models.base_precision(
            model.name, model.dtype, model.device, trust_remote_code=model.trust_remote_code
        )
    )
