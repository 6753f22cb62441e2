"""Do perplexity and a task rank compression recipes alike? One real model, a spread of recipes,
each built as a trial builds it and scored on both: perplexity under the fixed protocol and the
bundled multiple-choice task (``pydoc_mc``: which standard-library function a docstring
describes) through lm-evaluation-harness in-process, with its stderr; then the rank correlation.

    .venv/bin/python bench/task_ranking.py [--model smollm2-135m] [--limit 200]

No distillation (its cost would dominate): the recipes span precision, quantization, width
pruning and dropped layers. A task accuracy within about two stderrs of another does not rank
the two recipes, so the table shows the stderr beside each score and the correlation is given
over all recipes and over those whose accuracies differ from the base's by more than 2 stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from scipy.stats import spearmanr  # installed with lm-eval, which the task needs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoslim import data, models, precisions, studies
from autoslim.build import build
from autoslim.errors import AutoslimError
from autoslim.measure import PerplexityProtocol, perplexity
from autoslim.recipe import Recipe
from autoslim.tasks.run import TaskEvaluator
from autoslim.tasks.spec import TaskSpec
from bench.machine import Load, describe, machine


def recipes(device: str) -> list[Recipe]:
    fast = "bf16" if "bf16" in precisions.supported(device) else "fp32"
    return [
        Recipe(),
        Recipe(precision=fast),
        Recipe(precision=fast, bits=8, quant_backend="torchao"),
        Recipe(bits=4, quant_backend="bitsandbytes", quant_type="nf4"),
        Recipe(precision=fast, prune_ratio=0.1, prune_importance="activation"),
        Recipe(precision=fast, prune_ratio=0.2, prune_importance="activation"),
        Recipe(precision=fast, prune_ratio=0.3, prune_importance="activation"),
        Recipe(precision=fast, drop_layers=2),
        Recipe(precision=fast, drop_layers=4),
    ]


def spearman(x: list[float], y: list[float]) -> float:
    return float(spearmanr(x, y).statistic) if len(x) >= 3 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--limit", type=int, default=200, help="task questions (of 200)")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--max-windows", type=int, default=16)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    device = "cpu"
    record = machine("torch", "transformers", "lm-eval")
    base = models.load_model(args.model)
    corpus = data.stdlib_corpus()
    ids = data.tokens(base.tokenizer, corpus, "eval")
    protocol = PerplexityProtocol(window=args.window, max_windows=args.max_windows)
    task = TaskSpec(
        name="pydoc",
        harness="pydoc_mc",
        include_path=str(studies.path("example-task").parent / "tasks" / "pydoc_mc"),
        metric="acc",
        limit=args.limit,
        batch_size=16,
    )
    evaluator = TaskEvaluator({"pydoc": task}, device)
    rows = []
    for recipe in recipes(device):
        load = Load(threads=2)
        try:
            model = build(base, recipe, corpus=corpus, device=device).model
        except AutoslimError as e:  # a recipe this model or machine cannot take is a line
            print(f"{recipe.describe()}: not built ({e})")
            continue
        ppl = perplexity(model, ids, protocol).perplexity
        result = evaluator.evaluate(model, base.tokenizer)["pydoc"]
        rows.append((recipe.describe(), ppl, result.value, result.stderr or 0.0, load.stop()))
        name, _, acc, err, cost = rows[-1]
        print(f"{name}: perplexity {ppl:.3f}, acc {acc:.3f} ± {err:.3f}", flush=True)
        del model

    print(f"\n{args.model} on {describe(record)}")
    print(
        f"perplexity {protocol.describe()}; task pydoc_mc, {args.limit} four-way questions, "
        "accuracy ± stderr (chance 0.25)"
    )
    base_ppl, base_acc, base_err = rows[0][1], rows[0][2], rows[0][3]
    print(
        f"{'recipe':<40} {'ppl':>8} {'ppl +%':>8} {'acc':>6} {'± se':>6} {'acc Δ':>7} {'load':>5}"
    )
    for name, ppl, acc, err, cost in rows:
        print(
            f"{name:<40} {ppl:8.3f} {100 * (ppl / base_ppl - 1):+7.1f}% {acc:6.3f} {err:6.3f} "
            f"{acc - base_acc:+7.3f} {cost['load_average']:5.1f}"
        )
    # perplexity rises as quality falls, accuracy falls: agreement is a negative correlation
    everything = spearman([r[1] for r in rows], [-r[2] for r in rows])
    apart = [r for r in rows[1:] if abs(r[2] - base_acc) > 2 * max(r[3], base_err)]
    separated = spearman([r[1] for r in [rows[0], *apart]], [-r[2] for r in [rows[0], *apart]])
    print(
        f"Spearman(perplexity, -accuracy) over {len(rows)} recipes: {everything:+.2f}; over the "
        f"base and the {len(apart)} recipes whose accuracy is > 2 stderr from the base's: "
        f"{separated:+.2f}"
    )


if __name__ == "__main__":
    main()
