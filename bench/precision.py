"""Precision x quantization backend on one model, side by side: prefill and decode seconds,
perplexity, size and ratios to the fp32 base, all measured in one run, interleaved.

    .venv/bin/python bench/precision.py [--model reference] [--rounds 3] [--threads 1]

Each round measures every row once (default workload, ``autoslim.measure``) in turn, so load
from other processes hits all rows alike; the table shows the median over rounds and the CPU
wait beside it. Rows are built by ``autoslim.build.build`` from recipes, exactly as a trial
builds them: the base at each precision the device runs, each backend's schemes, and a 20 %
width prune and one dropped layer at the device's best 16-bit precision.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
from typing import Any

from autoslim import data, models, precisions
from autoslim.build import build
from autoslim.measure import Measurement, Workload, measure
from autoslim.recipe import Recipe


def rows(device: str) -> list[Recipe]:
    """The recipes to compare: precisions, then every backend scheme, then two structural cuts."""
    native = [p for p in precisions.PRECISIONS if precisions.why_not(p, device) is None]
    fast = "bf16" if "bf16" in native else "fp32"
    recipes = [Recipe(precision=p) for p in native]
    recipes += [
        Recipe(precision=fast, bits=8, quant_backend="torchao"),
        Recipe(precision=fast, bits=8, quant_backend="torchao", quant_activations=True),
        Recipe(bits=8, quant_backend="bitsandbytes"),
        Recipe(precision=fast, bits=4, quant_backend="bitsandbytes", quant_type="nf4"),
        Recipe(precision=fast, prune_ratio=0.2, prune_importance="wanda"),
        Recipe(precision=fast, drop_layers=1),
    ]
    return recipes


def label(recipe: Recipe) -> str:
    return recipe.describe() if not recipe.is_identity("fp32") else "fp32 base"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="reference")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurements per row")
    parser.add_argument("--threads", type=int, default=1, help="torch threads while timing")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    corpus = data.stdlib_corpus()
    base = models.load_model(args.model)
    device = "cpu"
    workload = Workload(threads=args.threads)
    built: list[tuple[Recipe, Any]] = []
    for recipe in rows(device):
        try:
            built.append((recipe, build(base, recipe, corpus=corpus).model))
        except Exception as e:  # a backend this machine cannot run is a row, not a crash
            print(f"{label(recipe)}: not built ({e})")
    results: dict[str, list[Measurement]] = {label(r): [] for r, _ in built}
    for round_ in range(args.rounds):
        for recipe, model in built:
            results[label(recipe)].append(measure(model, base.tokenizer, corpus, workload))
        print(f"round {round_ + 1}/{args.rounds} done, load average {os.getloadavg()[0]:.2f}")

    print(
        f"\n{args.model} on {device}, {args.threads} thread(s), default workload "
        f"({workload.prefill_windows} prefill windows + {workload.decode_tokens} decode tokens), "
        f"median of {args.rounds} interleaved rounds"
    )
    first = results[label(built[0][0])]
    base_prefill = median([m.prefill_seconds for m in first])
    base_decode = median([m.decode_seconds for m in first])
    base_seconds = median([m.seconds for m in first])
    base_ppl = first[0].perplexity
    print(
        f"{'recipe':<40} {'prefill s':>9} {'decode s':>9} {'seconds':>8} {'x fp32':>7} "
        f"{'prefill x':>9} {'decode x':>9} {'ppl':>7} {'ppl +%':>7} {'MB':>6} {'cv':>6} "
        f"{'cpu wait':>8}"
    )
    for name, ms in results.items():
        prefill = median([m.prefill_seconds for m in ms])
        decode = median([m.decode_seconds for m in ms])
        seconds = median([m.seconds for m in ms])
        waits = [m.cpu_wait_fraction for m in ms if m.cpu_wait_fraction is not None]
        print(
            f"{name:<40} {prefill:9.3f} {decode:9.3f} {seconds:8.3f} "
            f"{base_seconds / seconds:6.2f}x {base_prefill / prefill:8.2f}x "
            f"{base_decode / decode:8.2f}x {ms[0].perplexity:7.3f} "
            f"{100 * (ms[0].perplexity / base_ppl - 1):+6.2f}% {ms[0].size_bytes / 1e6:6.2f} "
            f"{median([m.seconds_cv for m in ms]):6.1%} "
            f"{median(waits) if waits else float('nan'):7.1%}"
        )


if __name__ == "__main__":
    main()
