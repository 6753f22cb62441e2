"""Compression on the reference model: seconds and perplexity after each stage for a handful of
recipes, and the cost of one distillation step before / after the speed-up, side by side.

    .venv/bin/python bench/compress.py [--model reference] [--steps 6] [--max-windows 32]

KD step costs are interleaved (plain step, then each KD variant, in turn, several rounds) and
reported as medians, so load from other processes hits them all alike.
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import time
from typing import Any

import torch

from autoslim import data, models
from autoslim.build import build
from autoslim.compress.distill import TeacherCache, distill, kd_loss
from autoslim.compress.size import parameter_count
from autoslim.measure.perplexity import perplexity
from autoslim.operators.width import IMPORTANCES
from autoslim.protocol import PerplexityProtocol
from autoslim.recipe import Recipe
from autoslim.testing import textbook_kd_loss

RECIPES = (
    *(Recipe(prune_ratio=0.2, prune_importance=how) for how in IMPORTANCES),
    Recipe(drop_layers=1),
    Recipe(prune_ratio=0.3),
    Recipe(drop_heads_per_layer=2),
    Recipe(bits=4, quant_type="nf4", double_quant=False),
    Recipe(bits=8),
    Recipe(prune_ratio=0.3, drop_heads=((0, 1), (2, 5)), bits=4),
    Recipe(prune_ratio=0.3, drop_heads_per_layer=2, kd_steps=20, kd_temperature=2.0, bits=4),
)


def plain_step(student: Any, batch: torch.Tensor, optimizer: Any, autocast: bool) -> None:
    """One ordinary training step: transformers' own next-token loss, AdamW."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = student(input_ids=batch, labels=batch, use_cache=False).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def textbook_kd_step(
    student: Any, teacher: Any, batch: torch.Tensor, optimizer: Any, autocast: bool
) -> None:
    """KD before the speed-up: the teacher runs every step, autograd over the full vocabulary."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        with torch.no_grad():
            teacher_logits = teacher(input_ids=batch, use_cache=False).logits
        logits = student(input_ids=batch, use_cache=False).logits
    loss = textbook_kd_loss(logits, teacher_logits, batch, temperature=2.0, alpha=0.5)[0]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def loss_saved_bytes(base: models.LoadedModel, ids: torch.Tensor) -> None:
    """Bytes the loss alone keeps for its backward pass (on top of the model's activations),
    counted by autograd's saved-tensor hook with shared storage once: textbook vs fused."""
    window = min(256, base.model.config.max_position_embeddings)
    cached = TeacherCache(base.model, ids, window=window)
    batch = cached.batch(0)
    with torch.no_grad():
        teacher_logits = base.model(input_ids=batch.inputs, use_cache=False).logits
        student_logits = base.model(input_ids=batch.inputs, use_cache=False).logits

    def saved(loss_of_logits: Any) -> int:
        storages: dict[int, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if storage.data_ptr() != logits.untyped_storage().data_ptr():  # not the input
                storages[storage.data_ptr()] = storage.nbytes()
            return tensor

        logits = student_logits.clone().requires_grad_()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss_of_logits(logits)[0].backward()
        return sum(storages.values())

    textbook = saved(lambda z: textbook_kd_loss(z, teacher_logits, batch.inputs, 2.0, 0.5))
    fused = saved(lambda z: kd_loss(z, batch, 2.0, 0.5))
    logits_mb = student_logits.nbytes / 2**20
    print(
        f"\nKD loss memory kept for backward (logits {logits_mb:.0f} MiB fp32): textbook "
        f"{textbook / 2**20:.0f} MiB, fused {fused / 2**20:.0f} MiB"
    )


def kd_step_seconds(base: models.LoadedModel, ids: torch.Tensor, rounds: int) -> None:
    """Median seconds per step: plain training, KD before the speed-up (live teacher, autograd
    KL), KD with the fused loss but a live teacher, KD after (fused loss, cached teacher)."""
    window = min(256, base.model.config.max_position_embeddings)
    cached = TeacherCache(base.model, ids, window=window)
    live = TeacherCache(base.model, ids, window=window, top_k=None, reuse=False)
    for step in range(rounds + 1):
        cached.batch(step)  # the study pays this once; every trial after reads the cache
    print(f"\nKD step (batch {cached.batch_size}x{window}), median of {rounds} interleaved steps")
    names = ("plain", "textbook", "fused, live teacher", "fused, cached top-64")
    for autocast in (False, True):
        student = copy.deepcopy(base.model)
        optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5, weight_decay=0.0)
        times: dict[str, list[float]] = {name: [] for name in names}
        for step in range(rounds + 1):
            batch = cached.batch(step).inputs
            started = time.perf_counter()
            plain_step(student, batch, optimizer, autocast)
            plain = time.perf_counter() - started
            started = time.perf_counter()
            textbook_kd_step(student, base.model, batch, optimizer, autocast)
            textbook = time.perf_counter() - started
            fused = [
                distill(
                    student,
                    teacher,
                    steps=1,
                    temperature=2.0,
                    alpha=0.5,
                    lr=1e-5,
                    autocast=torch.bfloat16 if autocast else None,
                )["kd_seconds_per_step"]
                for teacher in (live, cached)
            ]
            if step:  # the first round warms up kernels
                for name, seconds in zip(names, (plain, textbook, *fused), strict=True):
                    times[name].append(seconds)
        medians = {name: statistics.median(values) for name, values in times.items()}
        label = "bf16 autocast" if autocast else "fp32"
        print(
            f"  {label:<13}  plain step {medians['plain']:.3f} s"
            + "".join(
                f" | {name} {medians[name]:.3f} s = {medians[name] / medians['plain']:.2f}x"
                for name in names[1:]
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="reference")
    parser.add_argument("--steps", type=int, default=6, help="interleaved KD timing rounds")
    parser.add_argument("--max-windows", type=int, default=32)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # one cast warning per matmul
    corpus = data.stdlib_corpus()
    base = models.load_model(args.model)
    ids = data.tokens(base.tokenizer, corpus, "eval")
    protocol = PerplexityProtocol(max_windows=args.max_windows)
    print(
        f"{args.model}: {parameter_count(base.model):,} parameters, "
        f"{torch.get_num_threads()} threads, eval {protocol.describe()}"
    )
    print(f"base perplexity {perplexity(base.model, ids, protocol).perplexity:.2f}")
    kd_ids = data.tokens(base.tokenizer, corpus, "kd")
    cache = TeacherCache(
        base.model, kd_ids, window=min(256, base.model.config.max_position_embeddings)
    )
    header = f"{'recipe':<44} {'prune':>6} {'heads':>6} {'distill':>8} {'quant':>6}  perplexity"
    print("\n" + header)
    for recipe in RECIPES:
        seen: dict[str, float] = {}

        def check(stages: str, model: Any, seen: dict[str, float] = seen) -> None:
            seen[stages] = perplexity(model, ids, protocol).perplexity

        result = build(base, recipe, corpus=corpus, teacher_cache=cache, check=check)
        final = perplexity(result.model, ids, protocol).perplexity
        s = result.stage_seconds
        print(
            f"{recipe.describe():<44} {s['structured_prune']:>5.2f}s {s['drop_heads']:>5.2f}s "
            f"{s['distill']:>7.2f}s {s['quantize']:>5.2f}s  "
            + "".join(f"after {stages} {value:.2f} -> " for stages, value in seen.items())
            + f"final {final:.2f}"
        )
    loss_saved_bytes(base, kd_ids)
    kd_step_seconds(base, kd_ids, args.steps)


if __name__ == "__main__":
    main()
