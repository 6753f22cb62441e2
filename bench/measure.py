"""How repeatable are `seconds` and `joules`? Measure the reference model and one compressed
recipe N times each (interleaved) with one workload, and print median, min, max and CV.

    .venv/bin/python bench/measure.py                       # default workload, 5 x 2 models
    .venv/bin/python bench/measure.py --decode-tokens 64 --repeats 7 --threads 2

The compressed recipe is a 50 % structured MLP prune through autoslim.compress.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import sys
import time
from typing import Any

from autoslim import data, models
from autoslim.measure import Measurement, PerplexityProtocol, Workload, measure
from autoslim.measure.energy import get_meter


def compressed(base: models.LoadedModel, corpus: data.Corpus) -> tuple[Any, str]:
    from autoslim.build import build
    from autoslim.recipe import Recipe

    built = build(base, Recipe(prune_ratio=0.5), corpus=corpus)
    return built.model, "autoslim.compress: structured_prune 50 %"


def spread(values: list[float]) -> str:
    if any(math.isnan(v) for v in values):
        return "unresolved"
    mean = statistics.fmean(values)
    cv = statistics.stdev(values) / mean if len(values) > 1 and mean else float("nan")
    return (
        f"median {statistics.median(values):9.4f}  min {min(values):9.4f}  "
        f"max {max(values):9.4f}  CV {cv:6.2%}"
    )


def main() -> int:
    default = Workload()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--times", type=int, default=5, help="measurements per model")
    parser.add_argument("--energy", default="auto")
    keys = ("prefill_batch", "prefill_windows", "decode_tokens", "warmup", "repeats", "threads")
    for key in keys:
        parser.add_argument("--" + key.replace("_", "-"), type=int, default=getattr(default, key))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    workload = Workload(protocol=PerplexityProtocol(), **{k: getattr(args, k) for k in keys})
    corpus = data.stdlib_corpus()
    base = models.load_model("reference")
    model, tokenizer, source = base.model, base.tokenizer, "reference"
    small, how = compressed(base, corpus)
    data.tokens(tokenizer, corpus, "eval")  # tokenize once, outside the timings
    print(f"reference: {source}; compressed: {how}")
    print(f"workload: {workload.describe()}")
    print(f"CPUs {os.cpu_count()}, load average before {os.getloadavg()}")
    results: dict[str, list[Measurement]] = {"reference": [], "compressed": []}
    costs: list[float] = []
    started = time.perf_counter()
    with get_meter(args.energy) as meter:
        for _ in range(args.times):
            for label, m in (("reference", model), ("compressed", small)):
                t0 = time.perf_counter()
                results[label].append(measure(m, tokenizer, corpus, workload, meter=meter))
                costs.append(time.perf_counter() - t0)
                print(".", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    print(f"meter: {results['reference'][0].provenance['meter']}")
    for label, runs in results.items():
        first = runs[0]
        print(
            f"\n{label}: perplexity {first.perplexity:.2f}, {first.parameters:,} parameters, "
            f"{first.size_bytes:,} bytes"
        )
        print(f"  seconds  {spread([r.seconds for r in runs])}")
        print(f"  joules   {spread([r.joules for r in runs])}  [{first.energy_source}]")
        print(f"  fastest  {spread([min(r.seconds_samples) for r in runs])}  (min of repeats)")
        within = statistics.median(r.seconds_cv for r in runs)
        print(f"  within one measurement: median seconds CV over repeats {within:.2%}")
        waits = [r.cpu_wait_fraction for r in runs if r.cpu_wait_fraction is not None]
        if waits:
            contended = sum(bool(r.timing_flags) for r in runs)
            print(
                f"  waited for a CPU: median {statistics.median(waits):.1%} of the timed runs, "
                f"max {max(waits):.1%}; {contended} of {len(runs)} measurements flagged"
            )
    ratio = statistics.median(r.seconds for r in results["compressed"]) / statistics.median(
        r.seconds for r in results["reference"]
    )
    print(f"\ncompressed / reference seconds: {ratio:.3f}")
    print(
        f"cost: one workload run {statistics.median(r.seconds for r in results['reference']):.3f}"
        f" s; one measure() call {statistics.median(costs):.2f} s "
        f"({workload.warmup} warm-up + {workload.repeats} repeats + perplexity); "
        f"bench {time.perf_counter() - started:.0f} s"
    )
    print(f"load average after {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
