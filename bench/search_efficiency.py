"""Is the search worth it? Samplers replayed over a measured grid, hypervolume vs trial count.

    .venv/bin/python bench/search_efficiency.py [--seeds 10] [--limit N] [--replay-only]

Step 1 measures every recipe of the demo's search space (``studies/demo.toml``, narrowed
to a 48-recipe grid: ``GRID_OVERRIDES``) once on the reference model,
with autoslim's own objective (``autoslim.search.worker.BuildAndMeasure``: build, early abort,
measure; 1 thread) and stores the table in ``bench/data/search_grid.json`` beside the corpus
fingerprint, the machine, the versions and the load and CPU wait of every row. Rows already
in the table are not measured again, so an interrupted run resumes.

Step 2 replays the table as an oracle: each sampler proposes recipes through
``autoslim.search.study`` exactly as a study does (the base model and known recipes enqueued first,
duplicates not counted, an abandoned recipe a pruned trial, the perplexity constraint set on
the trial) and is told the stored result. Hypervolume of the feasible front comes from
Optuna's public ``optuna.visualization.plot_hypervolume_history`` over one fixed reference
point (the perplexity limit, 1.1x the slowest and 1.1x the hungriest feasible grid row), shown
as a share of the full grid's hypervolume.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoslim.cli.demo import DEMO_FILE
from autoslim.recipe import Recipe
from autoslim.search import config as study_config
from autoslim.search.config import StudyConfig, base_recipe
from autoslim.search.space import grid_space, suggest_recipe
from autoslim.search.study import (
    MAX_DUPLICATES_IN_A_ROW,
    enqueue_starting_points,
    make_sampler,
    recipe_for,
)
from autoslim.search.trials import CONSTRAINT
from bench.machine import Load, describe, machine

TABLE = Path(__file__).resolve().parent / "data" / "search_grid.json"
# The demo's space made a grid small enough to measure in about 25 minutes on 2 cores shared
# with other work (load average near 10 when this was written): pruning in 0.2 steps,
# weight-only int8, no distillation (a 20-step KD trial took 130 s at that load). 48 recipes;
# the demo's own space has 288 plus a continuous temperature.
# The space bench/data/search_grid.json was measured in (on a CPU with bf16; torch only).
GRID_OVERRIDES: dict[str, Any] = {
    "runtime": ["torch"],
    "precision": ["bf16", "fp32"],
    "prune_ratio": {"low": 0.0, "high": 0.4, "step": 0.2},
    "kd_steps": [0],
    "kd_temperature": [2.0],
    "quant_activations": [False],
}
GOAL_SHARE = 0.95
GOAL_TRIALS_VS_RANDOM = 1 / 3
CHECKPOINTS = (5, 10, 15, 20, 30, 40, 60, 80, 120)


def bench_config(sampler: str = "tpe", n_trials: int = 20) -> StudyConfig:
    overrides: dict[str, dict[str, Any]] = {
        "search": GRID_OVERRIDES,
        "study": {"sampler": sampler, "n_trials": n_trials},
    }
    return study_config.load(DEMO_FILE, overrides=overrides, check_model=False)


def key(recipe: Recipe) -> str:
    return json.dumps(recipe.to_params(), sort_keys=True)


def grid_recipes(config: StudyConfig) -> list[Recipe]:
    """Every distinct recipe of the (finite) search space, the base model first."""
    grid = grid_space(config.search)
    names = list(grid)
    seen = {base_recipe(config): None}

    def combos(i: int, chosen: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if i == len(names):
            yield dict(chosen)
            return
        for value in grid[names[i]]:
            chosen[names[i]] = value
            yield from combos(i + 1, chosen)

    for params in combos(0, {}):
        seen.setdefault(suggest_recipe(optuna.trial.FixedTrial(params), config.search), None)
    return list(seen)


# ---------------------------------------------------------------- step 1: measure the grid


def load_table(path: Path) -> dict[str, Any]:
    """The stored table, its rows keyed again through ``Recipe``: a knob added since they were
    measured takes its default, which is what those rows ran with."""
    if not path.is_file():
        return {"rows": {}}
    table: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))

    def rekey(params: dict[str, Any]) -> str:
        return key(Recipe.from_params(params))

    table["rows"] = {rekey(row["recipe"]): row for row in table["rows"].values()}
    table["base"] = rekey(json.loads(table["base"]))
    return table


def save_table(path: Path, table: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def measure_grid(path: Path, limit: int | None) -> dict[str, Any]:
    import torch

    from autoslim.search.worker import BuildAndMeasure, TrialAbandoned

    torch.set_num_threads(1)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    config = bench_config()
    recipes = grid_recipes(config)
    table = load_table(path)
    todo = [r for r in recipes if key(r) not in table["rows"]][:limit]
    print(f"grid: {len(recipes)} recipes, {len(recipes) - len(todo)} already measured")
    if not todo:
        return table
    objective = BuildAndMeasure(config)
    fingerprint = objective.info["corpus_fingerprint"]
    if table.get("corpus_fingerprint", fingerprint) != fingerprint:
        raise SystemExit(
            f"{path}: measured on corpus {table['corpus_fingerprint']}, this one is "
            f"{fingerprint}; delete the file to measure again"
        )
    table.update(
        corpus_fingerprint=fingerprint,
        model=config.model.name,
        base=key(base_recipe(config)),
        search=config.search.to_dict(),
        workload=config.workload,
        objectives=list(config.objectives),
        max_ppl_increase=config.max_ppl_increase,
        machine=machine(),
        threads=torch.get_num_threads(),
    )
    for i, recipe in enumerate(todo, 1):
        load = Load()
        row: dict[str, Any] = {"recipe": recipe.to_params()}
        try:
            result = objective(recipe)
            m = result["measurement"]
            row.update(
                status="done",
                values=[m[name] for name in config.objectives],
                measurement_cpu_wait=m.get("cpu_wait_fraction"),
                seconds_cv=m.get("seconds_cv"),
                size_bytes=m.get("size_bytes"),
                stage_seconds=result["build"]["stage_seconds"],
            )
        except TrialAbandoned as e:
            row.update(status="abandoned", reason=e.reason)
        row.update(load.stop())
        table["rows"][key(recipe)] = row
        save_table(path, table)
        print(
            f"[{i}/{len(todo)}] {recipe.describe():<60} {row['status']:<9} "
            f"{row['wall_seconds']:5.1f} s, load {row['load_average']:.2f}, "
            f"cpu wait {row['cpu_wait']:.0%}",
            flush=True,
        )
    return table


# ---------------------------------------------------------------- step 2: replay as an oracle


class Oracle:
    """The measured table as an objective: a recipe's stored result and its constraint."""

    def __init__(self, table: dict[str, Any], recipes: list[Recipe]) -> None:
        self.rows: dict[str, dict[str, Any]] = {key(r): table["rows"][key(r)] for r in recipes}
        self.max_increase = float(table["max_ppl_increase"])
        self.base_perplexity = float(self.rows[table["base"]]["values"][0])
        feasible = [values for values, ok in self.points() if ok]
        self.reference = [
            self.base_perplexity * (1 + self.max_increase),
            *(1.1 * max(v[i] for v in feasible) for i in (1, 2)),
        ]
        self.grid_hv = self.grid_hypervolume()

    def violation(self, values: list[float]) -> float:
        return values[0] / self.base_perplexity - 1 - self.max_increase

    def points(self) -> Iterator[tuple[list[float], bool]]:
        for row in self.rows.values():
            if row["status"] == "done":
                yield row["values"], self.violation(row["values"]) <= 0

    def tell(self, study: optuna.Study, trial: optuna.Trial, recipe: Recipe) -> None:
        row = self.rows.get(key(recipe))
        if row is None:
            raise SystemExit(f"{recipe!r} is not in the measured table; run without --replay-only")
        if row["status"] != "done":
            study.tell(trial, state=TrialState.PRUNED)
            return
        trial.set_constraint(CONSTRAINT, self.violation(row["values"]))
        study.tell(trial, row["values"])

    def grid_hypervolume(self) -> float:
        study = optuna.create_study(directions=["minimize"] * 3)
        for values, _ok in self.points():
            trial = study.ask()
            trial.set_constraint(CONSTRAINT, self.violation(values))
            study.tell(trial, values)
        return hypervolume_history(study, self.reference)[-1][1]


def hypervolume_history(study: optuna.Study, reference: list[float]) -> list[tuple[int, float]]:
    """(trial number, hypervolume of the feasible front so far), Optuna's public utility."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        figure = optuna.visualization.plot_hypervolume_history(study, reference)
    return list(zip(figure.data[0].x, figure.data[0].y, strict=True))


def replay(oracle: Oracle, sampler: str, seed: int, n_trials: int, enqueue: bool) -> list[float]:
    """Share of the grid's hypervolume after each counted trial (as ``run_study`` counts)."""
    config = bench_config(sampler, n_trials)
    study = optuna.create_study(directions=["minimize"] * 3, sampler=make_sampler(config, seed))
    if enqueue:
        enqueue_starting_points(study, config)
    evaluated: set[Recipe] = set()
    counted: list[int] = []
    duplicates = 0
    while len(counted) < n_trials and duplicates < MAX_DUPLICATES_IN_A_ROW:
        trial = study.ask()
        recipe = recipe_for(trial, config)
        if recipe in evaluated:
            duplicates += 1
            study.tell(trial, state=TrialState.PRUNED)
            continue
        duplicates = 0
        evaluated.add(recipe)
        counted.append(trial.number)
        try:
            oracle.tell(study, trial, recipe)
        except RuntimeError:  # GridSampler calls study.stop() once the grid is exhausted
            break
    history = hypervolume_history(study, oracle.reference) if study.best_trials else []
    full = oracle.grid_hv
    shares, at = [], 0
    for number in counted:
        while at < len(history) and history[at][0] <= number:
            at += 1
        shares.append(history[at - 1][1] / full if at else 0.0)
    shares += [shares[-1]] * (n_trials - len(shares))  # the space ran out: the front stays
    return shares


SAMPLERS: dict[str, tuple[str, bool]] = {
    "tpe (default, known recipes)": ("tpe", True),
    "nsga2 (known recipes)": ("nsga2", True),
    "random (known recipes)": ("random", True),
    "random": ("random", False),
    "grid": ("grid", False),
}


def trials_to(shares: list[float], goal: float) -> float:
    return next((i + 1 for i, s in enumerate(shares) if s >= goal - 1e-12), math.inf)


def fmt(n: float) -> str:
    return f"{n:.0f}" if math.isfinite(n) else "never"


def compare(table: dict[str, Any], seeds: int, html: Path | None) -> None:
    oracle = Oracle(table, grid_recipes(bench_config()))
    n = len(oracle.rows)
    rows = oracle.rows.values()
    feasible = sum(ok for _v, ok in oracle.points())
    abandoned = sum(r["status"] != "done" for r in rows)
    load = statistics.median(r["load_average"] for r in rows)
    wait = statistics.median(r["cpu_wait"] for r in rows)
    print(
        f"\n{table['model']}: {n} recipes measured ({abandoned} abandoned early, {feasible} "
        f"feasible), corpus {table['corpus_fingerprint']}, {table['threads']} thread(s); "
        f"median load {load:.2f}, median CPU wait {wait:.0%}"
    )
    print(f"machine: {describe(table['machine'])}")
    print(
        f"reference point (ppl, s, J) = ({', '.join(f'{v:.4g}' for v in oracle.reference)}); "
        f"grid hypervolume {oracle.grid_hv:.4g}; {seeds} seeds per sampler"
    )
    checkpoints = [c for c in CHECKPOINTS if c <= n]
    curves: dict[str, list[list[float]]] = {}
    header = f"{'sampler':<30}" + "".join(f"{f'@{c}':>12}" for c in checkpoints)
    print("\nshare of the full grid's hypervolume, mean ± sd over seeds, by trial count")
    print(header + f"{'to 95 %':>10}{'s/trial':>9}")
    reached: dict[str, float] = {}
    for name, (sampler, enqueue) in SAMPLERS.items():
        started = time.perf_counter()
        curves[name] = [replay(oracle, sampler, seed, n, enqueue) for seed in range(seeds)]
        per_trial = (time.perf_counter() - started) / (seeds * n)
        cells = []
        for c in checkpoints:
            at = [curve[c - 1] for curve in curves[name]]
            cells.append(f"{statistics.mean(at):.3f}±{statistics.stdev(at):.3f}")
        reached[name] = statistics.median(trials_to(c, GOAL_SHARE) for c in curves[name])
        row = f"{name:<30}" + "".join(f"{c:>12}" for c in cells)
        print(row + f"{fmt(reached[name]):>10}{per_trial:>9.3f}")
    default, random = reached["tpe (default, known recipes)"], reached["random"]
    ok = math.isfinite(default) and default <= GOAL_TRIALS_VS_RANDOM * random
    print(
        f"\ngoal: the default reaches {GOAL_SHARE:.0%} of the grid's hypervolume in at most "
        f"1/3 of the trials random search needs (median over seeds): default {fmt(default)}, "
        f"random {fmt(random)} -> {'met' if ok else 'NOT met'}"
        + (f" ({default / random:.2f} of random's)" if math.isfinite(default / random) else "")
    )
    if html is not None:
        write_html(curves, html, table)
        print(f"plot: {html}")


def write_html(curves: dict[str, list[list[float]]], path: Path, table: dict[str, Any]) -> None:
    import plotly.graph_objects as go

    figure = go.Figure()
    for name, runs in curves.items():
        x = list(range(1, len(runs[0]) + 1))
        mean = [statistics.mean(r[i] for r in runs) for i in range(len(x))]
        figure.add_trace(go.Scatter(x=x, y=mean, mode="lines", name=name))
    figure.add_hline(y=GOAL_SHARE, line_dash="dot", annotation_text="95 %")
    figure.update_layout(
        title=f"Share of the full grid's hypervolume vs trials ({table['model']}, "
        f"{len(next(iter(curves.values())))} seeds)",
        xaxis_title="trials",
        yaxis_title="hypervolume / grid hypervolume",
    )
    figure.write_html(path, include_plotlyjs=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, default=TABLE)
    parser.add_argument("--limit", type=int, help="measure at most this many new recipes")
    parser.add_argument("--replay-only", action="store_true", help="use the stored table")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--html", type=Path, default=Path("search_efficiency.html"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    table = load_table(args.table) if args.replay_only else measure_grid(args.table, args.limit)
    missing = [r for r in grid_recipes(bench_config()) if key(r) not in table["rows"]]
    if missing:
        print(f"{len(missing)} grid recipes not measured yet; run again to finish the table")
        return
    compare(table, args.seeds, args.html)


if __name__ == "__main__":
    main()
