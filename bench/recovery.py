"""Recovery on a real model: each structural cut alone, healed by each recovery method, and the
base, side by side: perplexity, the share of the cut's increase taken back, seconds of the
recovery pass (wall and quiet: wall less the CPU wait), in one run.

    .venv/bin/python bench/recovery.py [--model smollm2-135m] [--max-windows 16]
        [--calibration-windows 16] [--cuts prune20,drop4] [--methods bias,block_kd,...]
        [--steps 512] [--lr 1e-3] [--kd-steps 0] [--threads 1]

Every row is built by ``autoslim.build.build`` from a recipe, as a trial builds it, on the
calibration batch a study uses (KD split, seed 0); perplexity is the protocol's over the eval
split's first ``--max-windows`` windows of 256 tokens (deterministic: rows compare exactly).
``--kd-steps N`` adds, per method, the row with N distillation steps after it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoslim import data, models
from autoslim.build import build
from autoslim.compress.calibration import calibration_batch
from autoslim.measure.perplexity import perplexity
from autoslim.protocol import PerplexityProtocol
from autoslim.recipe import KNOBS, Recipe
from autoslim.search.costs import quiet_seconds, schedstat_seconds
from bench.machine import describe, machine

CUTS: dict[str, dict[str, Any]] = {
    "prune20": {"prune_ratio": 0.2, "prune_importance": "activation"},
    "prune20f": {"prune_ratio": 0.2, "prune_importance": "fluctuation"},
    "prune30": {"prune_ratio": 0.3, "prune_importance": "activation"},
    "drop1": {"drop_layers": 1},
    "drop2": {"drop_layers": 2},
    "drop4": {"drop_layers": 4},
    "heads3": {"drop_heads_per_layer": 3, "prune_importance": "activation"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--max-windows", type=int, default=16, help="perplexity windows")
    parser.add_argument("--calibration-windows", type=int, default=16)
    parser.add_argument("--cuts", default="prune20,drop4", help=", ".join(CUTS))
    parser.add_argument("--methods", default="bias,block_kd,bias+block_kd")
    parser.add_argument("--steps", type=int, default=KNOBS["recovery_steps"].default)
    parser.add_argument("--lr", type=float, default=KNOBS["recovery_lr"].default)
    parser.add_argument("--kd-steps", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)
    record = machine("torch", "transformers")
    corpus = data.stdlib_corpus()
    base = models.load_model(args.model)
    ids = data.tokens(base.tokenizer, corpus, "eval")
    protocol = PerplexityProtocol(window=256, max_windows=args.max_windows)
    calibration = calibration_batch(
        base.tokenizer, corpus, windows=args.calibration_windows, window=256
    )
    base_ppl = perplexity(base.model, ids, protocol).perplexity
    print(f"{args.model}, fp32, {args.threads} thread(s); {describe(record)}")
    print(
        f"perplexity over {args.max_windows} eval windows of 256 tokens; calibration "
        f"{tuple(calibration.shape)}; block_kd {args.steps} steps in all at lr {args.lr:g}\n"
    )
    header = (
        f"{'cut':<9}{'recipe':<58}{'ppl':>8}{'ppl +%':>9}{'back':>7}"
        f"{'recovery s':>12}{'quiet s':>9}{'load':>6}{'wait':>6}"
    )
    print(header)
    print(f"{'':<9}{'base model (fp32)':<58}{base_ppl:>8.3f}{0:>+8.1%}")
    for name in args.cuts.split(","):
        cut = Recipe(**CUTS[name])
        recipes = [cut]
        for method in args.methods.split(","):
            healed = cut.replace(recovery=method, recovery_steps=args.steps, recovery_lr=args.lr)
            recipes.append(healed)
            if args.kd_steps:
                recipes.append(healed.replace(kd_steps=args.kd_steps))
        if args.kd_steps:
            recipes.insert(1, cut.replace(kd_steps=args.kd_steps))
        cut_ppl = None
        for recipe in recipes:
            load = os.getloadavg()[0]
            before, started = schedstat_seconds(), time.perf_counter()
            result = build(base, recipe, corpus=corpus, calibration=calibration)
            wall, after = time.perf_counter() - started, schedstat_seconds()
            ppl = perplexity(result.model, ids, protocol).perplexity
            seconds = result.stage_seconds["recovery"]
            quiet = quiet_seconds(seconds, before, after) if seconds else 0.0
            wait = 1 - quiet_seconds(wall, before, after) / wall
            if cut_ppl is None:
                cut_ppl = ppl
            back = (cut_ppl - ppl) / (cut_ppl - base_ppl) if cut_ppl != base_ppl else 0.0
            print(
                f"{name:<9}{recipe.describe():<58}{ppl:>8.3f}{ppl / base_ppl - 1:>+8.1%}"
                f"{back:>7.0%}{seconds:>12.1f}{quiet:>9.1f}{load:>6.1f}{wait:>6.0%}",
                flush=True,
            )


if __name__ == "__main__":
    main()
