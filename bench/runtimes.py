"""Every runtime side by side on one model: perplexity, prefill and decode seconds, size and
conversion seconds of the same recipes in torch and in each engine, in one interleaved run.

    .venv/bin/python bench/runtimes.py [--model smollm2-135m] [--rounds 3] [--threads 1]
        [--max-windows 8] [--prefill-windows 4] [--decode-tokens 32] [--only openvino,torch]

Every row is built and converted by ``autoslim.pipeline.Pipeline`` (as a trial is) and measured
by ``autoslim.measure.measure`` (the one perplexity protocol and workload). Each round measures
every row once in turn, so load from other processes hits all rows alike; the table shows
medians over rounds, the ratios to the torch fp32 base and to the fastest torch row, and the
CPU wait beside them.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoslim import precisions
from autoslim.measure import Measurement, PerplexityProtocol, Workload
from autoslim.pipeline import Pipeline
from autoslim.recipe import Recipe
from autoslim.runtimes import installed
from bench.machine import describe, machine


def rows(device: str, runtimes: list[str]) -> list[Recipe]:
    """The torch base at each precision the device runs, torchao int8; then each other
    runtime's base, 8-bit and 4-bit weights (data-free and data-aware, all-int4 and mixed with
    int8), and two structural cuts with 8-bit weights."""
    fast = "bf16" if "bf16" in precisions.supported(device) else "fp32"
    recipes = [Recipe(precision=p) for p in precisions.supported(device) if p != "fp16"]
    recipes.append(Recipe(precision=fast, bits=8, quant_backend="torchao"))
    if "openvino" in runtimes:
        ov = Recipe(runtime="openvino")
        recipes += [
            ov,
            ov.replace(bits=8),
            ov.replace(bits=4),
            ov.replace(bits=4, ov_data_aware="awq+scale_estimation"),
            ov.replace(bits=4, ov_ratio=0.8, ov_data_aware="awq+scale_estimation"),
            ov.replace(bits=4, ov_ratio=0.6, ov_data_aware="awq+scale_estimation"),
            ov.replace(bits=8, drop_layers=2),
            ov.replace(bits=8, prune_ratio=0.1, prune_importance="activation"),
        ]
    return recipes


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--max-windows", type=int, default=8, help="perplexity windows")
    parser.add_argument("--prefill-windows", type=int, default=4)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--only", default="", help="comma list of runtimes (default: installed)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    device = "cpu"
    runtimes = [r for r in installed(device) if not args.only or r in args.only.split(",")]
    protocol = PerplexityProtocol(window=args.window, max_windows=args.max_windows, batch_size=1)
    workload = Workload(
        protocol=protocol,
        prefill_windows=args.prefill_windows,
        prefill_batch=1,
        decode_tokens=args.decode_tokens,
        repeats=1,
        threads=args.threads,
    )
    pipeline = Pipeline.load(args.model, precision="fp32", workload=workload, device=device)
    print(f"machine: {describe(machine('openvino', 'optimum-intel', 'nncf', 'llama_cpp_python'))}")
    built: list[tuple[Recipe, Any]] = []
    with contextlib.ExitStack() as stack:
        for recipe in rows(device, runtimes):
            load = os.getloadavg()[0]
            try:
                result = stack.enter_context(pipeline.built(recipe))
            except Exception as e:  # a recipe this machine cannot take is a row, not a crash
                print(f"{recipe.describe()}: not built ({e})", flush=True)
                continue
            built.append((recipe, result))
            print(
                f"built {recipe.describe()} (convert {result.stage_seconds['convert']:.1f} s, "
                f"load {load:.2f})",
                flush=True,
            )
        results: dict[Recipe, list[Measurement]] = {r: [] for r, _ in built}
        for round_ in range(args.rounds):
            for recipe, result in built:
                results[recipe].append(pipeline.measure(result.model, teacher=False))
            print(f"round {round_ + 1}/{args.rounds}, load {os.getloadavg()[0]:.2f}", flush=True)
    report(args, workload, built, results)


def report(
    args: argparse.Namespace,
    workload: Workload,
    built: list[tuple[Recipe, Any]],
    results: dict[Recipe, list[Measurement]],
) -> None:
    def phase(recipe: Recipe, name: str) -> float:
        return median([getattr(m, name) for m in results[recipe]])

    base = built[0][0]
    torch_rows = [r for r, _ in built if r.runtime == "torch"]
    fastest = min(torch_rows, key=lambda r: phase(r, "seconds"))
    base_ppl = results[base][0].perplexity
    print(
        f"\n{args.model}, {args.threads} thread(s), {workload.describe()}, perplexity "
        f"{workload.protocol.describe()}; median of {args.rounds} interleaved rounds; x = "
        f"speed-up over the torch fp32 base, xT over the fastest torch row ({fastest.describe()})"
    )
    print(
        f"{'recipe':<66} {'ppl':>7} {'ppl +%':>7} {'prefill s':>9} {'x':>5} {'decode s':>8} "
        f"{'x':>5} {'tok/s':>6} {'xT':>5} {'MB':>6} {'convert s':>9} {'cpu wait':>8}"
    )
    for recipe, result in built:
        ms = results[recipe]
        waits = [m.cpu_wait_fraction for m in ms if m.cpu_wait_fraction is not None]
        prefill, decode = phase(recipe, "prefill_seconds"), phase(recipe, "decode_seconds")
        print(
            f"{recipe.describe():<66} {ms[0].perplexity:7.3f} "
            f"{100 * (ms[0].perplexity / base_ppl - 1):+6.2f}% {prefill:9.3f} "
            f"{phase(base, 'prefill_seconds') / prefill:4.2f}x {decode:8.3f} "
            f"{phase(base, 'decode_seconds') / decode:4.2f}x "
            f"{workload.decode_tokens / decode:6.1f} "
            f"{phase(fastest, 'seconds') / phase(recipe, 'seconds'):4.2f}x "
            f"{ms[0].size_bytes / 1e6:6.1f} {result.stage_seconds['convert']:9.1f} "
            f"{median(waits) if waits else float('nan'):7.1%}"
        )


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"bench/runtimes.py took {time.perf_counter() - started:.0f} s")
