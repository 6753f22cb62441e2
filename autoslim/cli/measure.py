"""``autoslim measure``: every figure of a model (and of a compressed copy) under the workload.

Perplexity and drift under the fixed protocol; seconds, joules and peak memory of the timed
workload; size and parameters. With recipe flags (when the command has them) the compressed
model is measured too, against the base model as teacher, and shown alongside.
"""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING, Any

from autoslim.cli._common import (
    add_data_args,
    add_model_args,
    add_protocol_args,
    add_recipe_args,
    add_workload_args,
    print_json,
    print_table,
    recipe_from_args,
    workload_from,
)

if TYPE_CHECKING:
    from autoslim.measure import Measurement, Workload


def register(subparsers: Any) -> None:
    subparsers.add_parser(
        "measure",
        help="measure a model: perplexity, seconds, joules, memory, size and drift",
        description="Measure a model under the fixed perplexity protocol and the timed "
        "workload; with recipe flags, build that recipe and measure it too, against the base "
        "model as teacher, side by side.",
        arguments=add_arguments,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_args(parser)
    add_data_args(parser)
    add_protocol_args(parser)
    add_workload_args(parser)
    add_recipe_args(parser)
    parser.add_argument("--device", help="where to run: cpu (default), cuda, cuda:1 ...")
    parser.add_argument(
        "--dtype",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help="precision the base model is loaded in (auto: a 16-bit model in the 16-bit type "
        "this device computes natively, an fp32 model in fp32); a recipe's --precision "
        "defaults to it",
    )
    parser.set_defaults(func=run)


def _spread(samples: list[float], cv: float, unit: str, digits: int) -> str:
    if not samples:
        return ""
    low, high = min(samples), max(samples)
    spread = "n/a" if math.isnan(cv) else f"{cv:.1%}"
    return f" (CV {spread}, {low:.{digits}f}-{high:.{digits}f} {unit}, n={len(samples)})"


def _column(m: Measurement, workload: Workload) -> dict[str, str]:
    drift = (
        "no teacher"
        if m.top1_agreement is None
        else f"top-1 agreement {m.top1_agreement:.2%}, KL {m.teacher_kl:.4f} nats/token"
    )
    prefill_rate = workload.prefill_tokens / m.prefill_seconds if m.prefill_seconds else 0.0
    decode_rate = workload.decode_tokens / m.decode_seconds if m.decode_seconds else 0.0
    return {
        "perplexity": f"{m.perplexity:.3f}",
        "seconds": f"{m.seconds:.4f} s" + _spread(m.seconds_samples, m.seconds_cv, "s", 4),
        "joules": f"{m.joules:.3f} J [{m.energy_source}]"
        + _spread(m.joules_samples, m.joules_cv, "J", 3),
        "energy flags": ", ".join(m.energy_flags) or "none",
        "waited for a CPU": "unknown"
        if m.cpu_wait_fraction is None
        else f"{m.cpu_wait_fraction:.1%} of the timed runs"
        + (f" ({', '.join(m.timing_flags)})" if m.timing_flags else ""),
        "throughput": f"prefill {prefill_rate:,.0f} tokens/s, decode {decode_rate:,.1f} tokens/s",
        "drift": drift,
        "size": f"{m.size_bytes:,} bytes",
        "peak memory": f"{m.peak_memory_bytes / 2**20:,.1f} MiB",
        "parameters": f"{m.parameters:,}",
    }


def run(args: argparse.Namespace) -> int:
    from autoslim import models
    from autoslim.measure import get_meter
    from autoslim.pipeline import Pipeline

    workload = workload_from(args)
    device = args.device or "cpu"
    base_precision = models.base_precision(
        args.model, args.dtype, device, trust_remote_code=args.trust_remote_code
    )
    recipe = recipe_from_args(args, precision=base_precision)
    compress = not recipe.is_identity(base_precision)
    built = None
    model_config = models.load_config(args.model, args.trust_remote_code)
    if compress:
        from autoslim.build import validate

        validate(recipe, model_config, device)
    workload.check_context(model_config)
    pipeline = Pipeline.load(
        args.model,
        precision=base_precision,
        workload=workload,
        text=args.text,
        dataset=args.dataset,
        device=device,
        seed=args.seed,
        trust_remote_code=args.trust_remote_code,
    )
    loaded, corpus = pipeline.base, pipeline.corpus
    with get_meter(args.energy, device=device) as meter:
        results: dict[str, Measurement] = {
            "base": pipeline.measure(loaded.model, meter=meter, teacher=False)
        }
        if compress:
            with pipeline.built(recipe) as built:
                results["compressed"] = pipeline.measure(built.model, meter=meter)
    base = results["base"]
    if args.json:
        report: dict[str, Any] = {
            "model": args.model,
            "model_source": models.source(args.model),
            "family": loaded.family,
            "corpus_fingerprint": corpus.fingerprint,
            "tokens_per_second": workload.prefill_tokens / base.prefill_seconds
            if base.prefill_seconds
            else None,
            "recipe": recipe.to_params(),
            "measurements": {label: m.to_dict() for label, m in results.items()},
        }
        if built is not None:
            report |= {"stage_seconds": built.stage_seconds, "build": built.info}
        print_json("measure", report)
        return 0
    columns = {label: _column(m, workload) for label, m in results.items()}
    rows: list[tuple[str, Any]] = [
        ("model", f"{args.model} ({loaded.family})"),
    ]
    origin = models.source(args.model)
    if "note" in origin:
        rows.append(("weights", f"{origin['file']}: {origin['note']}"))
    if built is not None:
        stages = ", ".join(f"{k} {v:.2f} s" for k, v in built.stage_seconds.items())
        rows += [("recipe", f"{recipe.describe()} (seed {args.seed})"), ("build", stages)]
    for key in columns["base"]:
        values = [f"{label}: {column[key]}" for label, column in columns.items()]
        rows.append((key, values[0] if len(values) == 1 else "  |  ".join(values)))
    prov = base.provenance
    rows += [
        ("workload", workload.describe()),
        ("protocol", f"{workload.protocol.describe()}; {base.scored_tokens:,} tokens scored"),
        ("corpus", f"{corpus.name} (eval split), fingerprint {corpus.fingerprint}"),
        ("device", f"{prov['device']} ({prov['device_name']}), {prov['torch_threads']} threads"),
        ("dtype", prov["dtype"]),
        ("peak memory is", prov["peak_memory"]),
    ]
    print_table(rows)
    return 0
