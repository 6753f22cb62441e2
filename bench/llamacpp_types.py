"""llama.cpp's GGUF types on a real model, through the llamacpp runtime: what each type really
becomes, its perplexity, speed, size and conversion time.

    .venv/bin/python bench/llamacpp_types.py [--model smollm2-135m] [--threads 1]
        [--types F16,Q8_0,...] [--no-imatrix] [--windows 8] [--rounds 3] [--drop-layers 4]
        [--structural-types Q8_0,Q4_1] [--json OUT]

Every row is converted by ``autoslim.runtimes.llamacpp`` (GGUF writer, llama.cpp's quantizer,
an importance matrix from the calibration windows of the KD split for the ``+imatrix`` rows)
and scored by the one perplexity implementation (``autoslim.measure.perplexity``) on the
stdlib eval windows (``--windows`` windows of 256 tokens, the Hugging Face tokenizer's ids).
Beside them: the model in PyTorch fp32, the GGUF file the named model ships (read as it is),
and one structural recipe (``--drop-layers`` layers dropped, no recovery) at
``--structural-types``.
(``smollm2-135m``'s weights are dequantized from that Q4_1 file, so every other type is a
second rounding of them, and Q4_1 re-quantizes to the very file.)

Speed is the runtime's own ``prefill`` (1 x 256 tokens) and greedy ``decode`` (32 tokens after
a 32-token prompt) at ``--threads`` threads: after a warm-up, the fastest of 2 runs in each of
``--rounds`` rounds, the rounds interleaved over the rows, the median round reported, with the
load average and the CPU wait of each row; beside them the same from this process's CPU
seconds, which a busy machine inflates far less at 1 thread. Conversion seconds are one
conversion (write + importance matrix + quantize + tokenizer check).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoslim import data, gguf, models
from autoslim.build import build
from autoslim.compress.calibration import calibration_batch, context_window
from autoslim.measure.perplexity import perplexity
from autoslim.protocol import PerplexityProtocol
from autoslim.recipe import Recipe
from autoslim.runtimes.base import ConvertInput, RuntimeModel
from autoslim.runtimes.llamacpp import IMATRIX_BLIND, RUNTIME, LlamaCppModel, system_info
from bench.machine import Load, best_seconds, describe, machine

TYPES = "F16,Q8_0,Q6_K,Q5_K_M,Q5_0,Q4_K_M,Q4_1,Q4_0,IQ4_NL"
PREFILL_TOKENS = 256
PROMPT_TOKENS = 32
DECODE_TOKENS = 32


def time_model(model: RuntimeModel, ids: torch.Tensor, threads: int) -> dict[str, float]:
    """Prefill seconds and decode tokens/s of ``model``, with the load while it ran."""
    prefill_ids = ids[:PREFILL_TOKENS].unsqueeze(0)
    prompt = ids[:PROMPT_TOKENS].unsqueeze(0)
    load = Load(threads)
    found = {}
    for clock, name in ((time.perf_counter, ""), (time.process_time, "_cpu")):
        prefill = best_seconds(lambda: model.prefill(prefill_ids), 2, clock)
        prompt_only = best_seconds(lambda: model.decode(prompt, 1), 2, clock)
        decode = best_seconds(lambda: model.decode(prompt, DECODE_TOKENS), 2, clock)
        found |= {
            f"prefill{name}_s": prefill,
            f"decode{name}_tok_s": (DECODE_TOKENS - 1) / (decode - prompt_only),
        }
    return {**found, **load.stop()}


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="llamacpp-bench-"))
    try:
        run(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run(workdir: Path) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--types", default=TYPES)
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--drop-layers", type=int, default=4)
    parser.add_argument("--structural-types", default="Q8_0,Q4_1")
    parser.add_argument("--no-imatrix", action="store_true", help="leave the +imatrix rows out")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    record = machine("llama_cpp_python", "gguf")
    print(f"machine: {describe(record)}")
    print(f"llama.cpp build: {system_info()}")

    base = models.load_model(args.model)
    corpus = data.stdlib_corpus()
    ids = data.tokens(base.tokenizer, corpus, "eval")
    protocol = PerplexityProtocol(window=256, max_windows=args.windows, batch_size=1)
    calibration = calibration_batch(
        base.tokenizer, corpus, window=context_window(base.model.config)
    )
    source = gguf.original(models.source(args.model))
    rows: dict[str, dict[str, Any]] = {}
    runtime_models: dict[str, RuntimeModel] = {}

    started = time.perf_counter()
    torch_ppl = perplexity(base.model, ids, protocol).perplexity
    rows["torch fp32"] = {"ppl": torch_ppl, "ppl_s": time.perf_counter() - started}

    def convert(label: str, model: Any, recipe: Recipe) -> None:
        folder = workdir / label.replace(" ", "_").replace("+", "_")
        folder.mkdir()
        started = time.perf_counter()
        converted = RUNTIME.convert(
            ConvertInput(
                model=model,
                tokenizer=base.tokenizer,
                recipe=recipe,
                threads=args.threads,
                workdir=folder,
                calibration=calibration,
                source=models.source(args.model),
            )
        )
        convert_s = time.perf_counter() - started
        runtime_models[label] = converted
        rows[label] = {
            "convert_s": convert_s,
            "types": converted.tensor_types() if isinstance(converted, LlamaCppModel) else {},
            "size_mb": converted.size_bytes() / 1e6,
            "tokenizer_matches_hf": converted.provenance().get("tokenizer_check", {}),
        }
        converted.close()

    for kind in args.types.split(","):
        convert(kind, base.model, Recipe(runtime="llamacpp", gguf_type=kind))
        if not args.no_imatrix and kind not in IMATRIX_BLIND:
            convert(
                f"{kind}+imatrix",
                base.model,
                Recipe(runtime="llamacpp", gguf_type=kind, imatrix=True),
            )
    if source is not None:
        runtime_models[f"{source.name} (as shipped)"] = LlamaCppModel(source, args.threads)
        rows[f"{source.name} (as shipped)"] = {"size_mb": source.stat().st_size / 1e6}
    if args.drop_layers:
        cut = Recipe(drop_layers=args.drop_layers)
        built = build(base, cut, corpus=corpus, calibration=calibration).model
        for kind in args.structural_types.split(","):
            convert(
                f"drop {args.drop_layers} layers, {kind}",
                built,
                Recipe(runtime="llamacpp", gguf_type=kind, drop_layers=args.drop_layers),
            )

    for label, model in runtime_models.items():
        started = time.perf_counter()
        rows[label]["ppl"] = perplexity(model, ids, protocol).perplexity
        rows[label]["ppl_s"] = time.perf_counter() - started
        rows[label]["dtype"] = model.describe_dtype()
        model.close()
    timings: dict[str, list[dict[str, float]]] = {label: [] for label in runtime_models}
    for _ in range(args.rounds):
        for label, model in runtime_models.items():
            timings[label].append(time_model(model, ids, args.threads))
            model.close()
    for label, runs in timings.items():
        rows[label] |= {
            key: statistics.median(r[key] for r in runs)
            for key in ("prefill_s", "decode_tok_s", "prefill_cpu_s", "decode_cpu_tok_s")
        }
        rows[label] |= {
            "load_average": max(r["load_average"] for r in runs),
            "cpu_wait": max(r["cpu_wait"] for r in runs),
        }

    shipped = rows.get(f"{source.name} (as shipped)", {}) if source else {}
    print(
        f"\n{args.model}, {args.threads} thread(s), perplexity over {args.windows} x 256 "
        f"stdlib eval tokens; prefill 1 x {PREFILL_TOKENS}, decode {DECODE_TOKENS} after "
        f"{PROMPT_TOKENS}; median of {args.rounds} interleaved rounds (fastest of 2 each); "
        "in parentheses: from CPU seconds\n"
    )
    print(
        "| row | tensor types | MB | perplexity | Δ torch | prefill ms | decode tok/s | "
        "decode × shipped | convert s | load, wait |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, row in rows.items():
        ppl = row["ppl"]
        cells = [label, row.get("dtype", ""), f"{row['size_mb']:.1f}" if "size_mb" in row else ""]
        cells += [f"{ppl:.3f}", f"{(ppl / torch_ppl - 1) * 100:+.2f} %"]
        if "decode_tok_s" in row:
            cells += [
                f"{row['prefill_s'] * 1000:.0f} ({row['prefill_cpu_s'] * 1000:.0f})",
                f"{row['decode_tok_s']:.1f} ({row['decode_cpu_tok_s']:.1f})",
                f"{row['decode_tok_s'] / shipped['decode_tok_s']:.2f} "
                f"({row['decode_cpu_tok_s'] / shipped['decode_cpu_tok_s']:.2f})"
                if "decode_tok_s" in shipped
                else "",
            ]
        else:
            cells += ["", "", ""]
        cells.append(f"{row['convert_s']:.1f}" if "convert_s" in row else "")
        cells.append(
            f"{row['load_average']:.1f}, {row['cpu_wait']:.2f}" if "decode_tok_s" in row else ""
        )
        print("| " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps({"machine": record, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
