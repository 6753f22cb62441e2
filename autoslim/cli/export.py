"""``autoslim export``: rebuild one trial and save it as a checkpoint plain transformers loads."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from autoslim.cli._common import print_json
from autoslim.cli._study_args import add_study_args, open_study
from autoslim.cli.pick import add_choice_args, show_progress


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "export",
        help="rebuild a trial (--trial N, or the pick) and save it as a Hugging Face checkpoint",
    )
    add_study_args(parser)
    parser.add_argument("--trial", type=int, metavar="N", help="the trial number to export")
    add_choice_args(parser)
    parser.add_argument("--out", type=Path, required=True, help="the folder to write")
    parser.add_argument(
        "--force", action="store_true", help="replace --out when it exists and is not empty"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autoslim.export import export
    from autoslim.pick import weights_from

    study = open_study(args)
    weights = weights_from(args.prefer, args.weights) if args.prefer or args.weights else None
    show_progress(args)
    result = export(
        study,
        args.out,
        trial_number=args.trial,
        weights=weights,
        max_ppl_increase=args.max_ppl_increase,
        force=args.force,
        retime=args.retime,
    )
    summary = {
        "study": study.study_name,
        "folder": str(result.folder),
        "trial": result.trial,
        "recipe": result.recipe.to_dict(),
        "recipe_summary": result.recipe.describe(),
        "chosen_because": result.reason,
        "stored_perplexity": result.stored_perplexity,
        "measured_perplexity": result.measured_perplexity,
        "relative_difference": result.relative_difference,
        "files": sorted(result.files),
    }
    if args.json:
        print_json("export", summary)
        return 0
    print(f"exported trial {result.trial} ({result.recipe.describe()}) to {result.folder}")
    print(f"  chosen because: {result.reason}")
    print(
        f"  perplexity re-measured after reload: {result.measured_perplexity:.4f} "
        f"(stored {result.stored_perplexity:.4f}, {result.relative_difference:+.3%})"
    )
    print(f"  load it with: AutoModelForCausalLM.from_pretrained({str(result.folder)!r})")
    return 0
