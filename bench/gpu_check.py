"""The CUDA paths, run for real in one short script (about 5 minutes on one GPU), every
figure printed. Each section reports its own failure and the next one still runs:

1. quantize → save → reload → same perplexity: bitsandbytes int8 and NF4, torchao int8;
2. precision and energy: fp32 vs bf16 (and fp16) base, bitsandbytes int8 and NF4, measured on
   the default workload with NVML energy and its flags (update period, short windows). The
   bitsandbytes docs report 8-bit costing more energy than fp16 at batch 1 on small models:
   the ``int8 / fp16 J`` column says whether that holds here;
3. a study on the reference model on CUDA (base, int8, NF4, then one sampled trial) whose
   worker is made to run out of CUDA memory on the 4-bit trial: that trial must end FAIL with
   the OOM as its reason and the study must go on;
4. SmolLM2-135M in bf16 and NF4 with joules, when it is in the local Hugging Face cache (the
   machine may be offline: it is never downloaded here).

    .venv/bin/python bench/gpu_check.py            # on a CUDA machine
    .venv/bin/python bench/gpu_check.py --dry-run  # anywhere: check the plan, run nothing
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded by this check

from autoslim.recipe import Recipe
from autoslim.search.config import StudyConfig

PRETRAINED = "HuggingFaceTB/SmolLM2-135M"
ROUNDTRIP = [
    Recipe(bits=8, quant_backend="bitsandbytes"),
    Recipe(precision="bf16", bits=4, quant_backend="bitsandbytes", quant_type="nf4"),
    Recipe(precision="bf16", bits=8, quant_backend="torchao"),
]
ENERGY = [
    Recipe(),
    Recipe(precision="bf16"),
    Recipe(precision="fp16"),
    Recipe(precision="fp16", bits=8, quant_backend="bitsandbytes"),
    Recipe(precision="fp16", bits=4, quant_backend="bitsandbytes", quant_type="nf4"),
]
PRETRAINED_RECIPES = [
    Recipe(precision="bf16"),
    Recipe(precision="bf16", bits=4, quant_backend="bitsandbytes", quant_type="nf4"),
]
STUDY = {
    "study": {"name": "gpu-check", "n_trials": 4, "trial_timeout_seconds": 240, "seed": 0},
    "model": {"name": "reference", "device": "cuda"},
    "workload": {"prefill_windows": 8, "repeats": 3},
    "search": {
        "precision": ["bf16"],
        "bits": [16, 8, 4],
        "quant_backend": ["bitsandbytes"],
        "drop_heads_per_layer": [0, 2],
        "prune_ratio": {"low": 0.0, "high": 0.2, "step": 0.1},
        "kd_steps": [0],
    },
}
OOM_BITS = 4


class OomAtFourBits:
    """The product objective, except that a 4-bit recipe first asks for more CUDA memory than
    the device has (a real ``torch.OutOfMemoryError`` in the worker process)."""

    def __init__(self, config: StudyConfig) -> None:
        from autoslim.search.worker import BuildAndMeasure

        self.inner = BuildAndMeasure(config)
        self.info = self.inner.info

    def __call__(self, recipe: Recipe) -> dict[str, Any]:
        import torch

        if recipe.bits == OOM_BITS:
            total = torch.cuda.get_device_properties(0).total_memory
            torch.empty(2 * total, dtype=torch.uint8, device="cuda")
        return self.inner(recipe)


def label(recipe: Recipe) -> str:
    if recipe.is_identity("fp32"):
        return "fp32 base"
    backend = f" [{recipe.quant_backend}]" if recipe.bits < 16 else ""
    return recipe.describe() + backend


def section(title: str, run: Callable[[], None]) -> bool:
    print(f"\n== {title}", flush=True)
    started = time.monotonic()
    try:
        run()
    except Exception as e:
        print(f"FAILED: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''}")
        traceback.print_exc(limit=3)
        return False
    print(f"({time.monotonic() - started:.0f} s)")
    return True


def environment() -> None:
    import bitsandbytes
    import optuna
    import torch
    import torchao
    import transformers

    props = torch.cuda.get_device_properties(0)
    print(
        f"device {props.name}, {props.total_memory / 2**30:.0f} GiB, sm {props.major}{props.minor}"
    )
    print(
        f"torch {torch.__version__} (CUDA {torch.version.cuda}), bitsandbytes "
        f"{bitsandbytes.__version__}, torchao {torchao.__version__}, transformers "
        f"{transformers.__version__}, optuna {optuna.__version__}"
    )


def _perplexity(model: Any, tokenizer: Any, corpus: Any) -> float:
    from autoslim import data
    from autoslim.measure import Workload
    from autoslim.measure.perplexity import perplexity

    ids = data.tokens(tokenizer, corpus, "eval")
    return perplexity(model, ids, Workload().protocol).perplexity


def roundtrip(model_name: str) -> None:
    from autoslim import data, models
    from autoslim.build import build
    from autoslim.compress.backends import save
    from autoslim.measure import Workload
    from autoslim.outputs.export import reload_perplexity
    from autoslim.precisions import torch_dtype

    corpus = data.stdlib_corpus()
    print(f"{'recipe':<44} {'built ppl':>10} {'reloaded':>10} {'diff':>9}")
    for recipe in ROUNDTRIP:
        base = models.load_model(model_name, device="cuda", dtype=torch_dtype(recipe.precision))
        built = build(base, recipe, corpus=corpus, device="cuda").model
        before = _perplexity(built, base.tokenizer, corpus)
        with tempfile.TemporaryDirectory() as folder:
            save(built, base.tokenizer, folder)
            after = reload_perplexity(Path(folder), corpus, Workload().protocol, "cuda")
        print(f"{label(recipe):<44} {before:10.4f} {after:10.4f} {after - before:+9.2e}")


def energy(model_name: str, recipes: list[Recipe]) -> None:
    from autoslim import data, models
    from autoslim.build import build
    from autoslim.measure import Workload, measure
    from autoslim.precisions import torch_dtype

    corpus = data.stdlib_corpus()
    workload = Workload()
    print(
        f"default workload: {workload.prefill_windows} prefill windows (batch "
        f"{workload.prefill_batch}) + {workload.decode_tokens} batch-1 decode tokens, "
        f"{workload.repeats} repeats"
    )
    print(
        f"{'recipe':<44} {'ppl':>8} {'prefill s':>9} {'decode s':>9} {'seconds':>8} "
        f"{'joules':>8} {'source':>8} {'peak MB':>8}  energy flags"
    )
    joules: dict[str, float] = {}
    for recipe in recipes:
        base = models.load_model(model_name, device="cuda", dtype=torch_dtype(recipe.precision))
        built = build(base, recipe, corpus=corpus, device="cuda").model
        m = measure(built, base.tokenizer, corpus, workload, meter="auto", device="cuda")
        joules[label(recipe)] = m.joules
        print(
            f"{label(recipe):<44} {m.perplexity:8.3f} {m.prefill_seconds:9.4f} "
            f"{m.decode_seconds:9.4f} {m.seconds:8.4f} {m.joules:8.3f} {m.energy_source:>8} "
            f"{m.peak_memory_bytes / 1e6:8.1f}  {', '.join(m.energy_flags) or '-'}"
        )
        del built, base
    fp16 = label(Recipe(precision="fp16"))
    int8 = label(Recipe(precision="fp16", bits=8, quant_backend="bitsandbytes"))
    if fp16 in joules and int8 in joules:
        ratio = joules[int8] / joules[fp16]
        verdict = "holds" if ratio > 1 else "does not hold"
        print(f"int8 / fp16 J = {ratio:.2f}: 8-bit costing more energy than fp16 {verdict} here")


def study_config(folder: Path, check_model: bool = True) -> StudyConfig:
    """The check's study file; ``check_model`` builds its extreme recipes (needs CUDA)."""
    from autoslim.search import config
    from tests.study.conftest import write_study

    return config.load(write_study(folder, STUDY, "gpu-check"), check_model=check_model)


def study_with_oom() -> None:
    import optuna
    from optuna.trial import TrialState

    from autoslim.search import study
    from autoslim.search.storage import make_storage
    from autoslim.search.trials import read_trials

    with tempfile.TemporaryDirectory() as tmp:
        config = study_config(Path(tmp))
        summary = study.run_study(config, objective="bench.gpu_check:OomAtFourBits")
        stored = optuna.load_study(
            study_name=config.study.name, storage=make_storage(config.study.storage)
        )
        records = read_trials(stored)
    print(f"stopped: {summary.stopped_because}; states {summary.states}")
    for r in records:
        figures = ", ".join(f"{k} {v:.4g}" for k, v in r.values.items())
        print(f"#{r.number} {r.label():<28} {r.state.name:<8} {figures or r.reason}")
    oom = [r for r in records if r.recipe.bits == OOM_BITS and r.state == TrialState.FAIL]
    after = [r for r in records if oom and r.number > oom[0].number]
    ok = bool(oom) and "OutOfMemoryError" in oom[0].reason and bool(after)
    print(f"OOM → FAIL with reason and the study went on: {'yes' if ok else 'NO'}")


def pretrained() -> None:
    from autoslim import models

    try:
        models.load_config(PRETRAINED)
    except Exception as e:
        print(f"skipped: {PRETRAINED} is not in the local Hugging Face cache ({e})")
        return
    energy(PRETRAINED, PRETRAINED_RECIPES)


def dry_run() -> int:
    """Everything but the GPU work: the recipes, the study file and the OOM objective's import."""
    import importlib

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        config = study_config(Path(tmp), check_model=torch.cuda.is_available())
    print(f"study: {config.study.n_trials} trials on {config.model.name} ({config.model.device})")
    module, _, name = "bench.gpu_check:OomAtFourBits".partition(":")
    print(f"objective: {getattr(importlib.import_module(module), name).__name__} (importable)")
    for title, recipes in (
        ("roundtrip", ROUNDTRIP),
        ("energy", ENERGY),
        ("pretrained", PRETRAINED_RECIPES),
    ):
        print(f"{title}: {' | '.join(label(r) for r in recipes)}")
    print("dry run: nothing measured")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="check the plan, run nothing")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    if args.dry_run:
        return dry_run()
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on a GPU machine, or pass --dry-run")
        return 2
    started = time.monotonic()
    results = [
        section("environment", environment),
        section("quantize → save → reload", lambda: roundtrip("reference")),
        section("precision and energy (reference model)", lambda: energy("reference", ENERGY)),
        section("study on CUDA with an OOM in a worker", study_with_oom),
        section(f"{PRETRAINED} bf16 and NF4", pretrained),
    ]
    print(f"\n{sum(results)}/{len(results)} sections ran in {time.monotonic() - started:.0f} s")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
