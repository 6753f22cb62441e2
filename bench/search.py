"""Which sampler should a study use by default? Hypervolume after N trials, per sampler.

The objective is the synthetic recipe → (perplexity, seconds, joules) map of the study tests
(smooth, deterministic, same knobs and constraint as a real study), so each trial costs
milliseconds and the comparison isolates the sampler. Each study starts like a real one: the
base model and the known recipes enqueued first. Hypervolume is over feasible trials
(perplexity at most +25 % over the base), normalised to a reference box, higher is better.

    .venv/bin/python bench/search.py [--trials 12 24 48] [--seeds 5]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import optuna

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoslim.recipe import Recipe
from autoslim.search.config import parse
from autoslim.search.study import enqueue_starting_points, recipe_for
from autoslim.search.trials import hypervolume as dominated_volume
from tests.study.fakes import synthetic_measurement

MAX_INCREASE = 0.25
SEARCH = {
    "bits": [16, 8, 4],
    "quant_type": ["nf4", "fp4"],
    "prune_ratio": {"low": 0.0, "high": 0.5, "step": 0.05},
    "drop_heads_per_layer": [0, 2, 4],
    "kd_steps": [0, 20, 50, 100],
    "kd_temperature": {"low": 1.0, "high": 8.0},
}
SAMPLERS = {
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
    "nsga2 (pop 50, Optuna default)": lambda seed: optuna.samplers.NSGAIISampler(seed=seed),
    "nsga2 (pop 8)": lambda seed: optuna.samplers.NSGAIISampler(population_size=8, seed=seed),
    "tpe (multivariate, 8 startup)": lambda seed: optuna.samplers.TPESampler(
        n_startup_trials=8, multivariate=True, seed=seed
    ),
    "tpe (multivariate, 4 startup)": lambda seed: optuna.samplers.TPESampler(
        n_startup_trials=4, multivariate=True, seed=seed
    ),
    "tpe (multivariate+group, 4 st.)": lambda seed: optuna.samplers.TPESampler(
        n_startup_trials=4, multivariate=True, group=True, seed=seed
    ),
    "tpe (independent, 4 startup)": lambda seed: optuna.samplers.TPESampler(
        n_startup_trials=4, seed=seed
    ),
}


def run(sampler: optuna.samplers.BaseSampler, n_trials: int) -> list[tuple[float, ...]]:
    config = parse({"search": SEARCH}, Path("bench.toml"), check_model=False)
    study = optuna.create_study(directions=["minimize"] * 3, sampler=sampler)
    enqueue_starting_points(study, config)
    base = synthetic_measurement(Recipe())["perplexity"]
    feasible = []
    for _ in range(n_trials):
        trial = study.ask()
        recipe = recipe_for(trial, config)
        m = synthetic_measurement(recipe)
        violation = m["perplexity"] / base - 1 - MAX_INCREASE
        trial.set_constraint("perplexity_increase", violation)
        values = (m["perplexity"], m["seconds"], m["joules"])
        study.tell(trial, values)
        if violation <= 0:
            feasible.append(values)
    return feasible


def hypervolume(points: list[tuple[float, ...]]) -> float:
    """Normalised by the base model's values: perplexity up to +25 %, time and energy 0..1."""
    base = synthetic_measurement(Recipe())
    scale = np.array([base["perplexity"], base["seconds"], base["joules"]])
    reference = np.array([1 + MAX_INCREASE, 1.2, 1.2])
    if not points:
        return 0.0
    normalised = np.array(points) / scale
    inside = normalised[(normalised < reference).all(axis=1)]
    return dominated_volume(inside.tolist(), reference.tolist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[12, 24, 48])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    header = f"{'sampler':<32}" + "".join(f"{f'HV @ {n}':>16}" for n in args.trials)
    print(header + f"{'s/trial':>10}")
    for name, make in SAMPLERS.items():
        cells = []
        started, count = time.perf_counter(), 0
        for n in args.trials:
            volumes = [hypervolume(run(make(seed), n)) for seed in range(args.seeds)]
            count += n * args.seeds
            cells.append(f"{statistics.mean(volumes):.4f}±{statistics.stdev(volumes):.4f}")
        per_trial = (time.perf_counter() - started) / count
        print(f"{name:<32}" + "".join(f"{c:>16}" for c in cells) + f"{per_trial:>10.3f}")


if __name__ == "__main__":
    main()
