"""``autoslim export``: rebuild one trial and save it as a checkpoint plain transformers loads."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from autoslim.cli._common import outcome_final, print_json
from autoslim.cli._study_args import add_study_args, open_study, study_arg_files
from autoslim.cli.pick import add_choice_args, show_progress, tightened


def register(subparsers: Any) -> None:
    subparsers.add_parser(
        "export",
        help="rebuild a trial (--trial N, or the pick) and save it as a Hugging Face checkpoint",
        description="Rebuild one trial from its stored recipe, save it as a checkpoint that "
        "AutoModelForCausalLM.from_pretrained loads, with a README.md model card and "
        "autoslim.json, and check its reloaded perplexity against the stored one.",
        arguments=add_arguments,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_study_args(parser)
    parser.add_argument("--trial", type=int, metavar="N", help="the trial number to export")
    add_choice_args(parser, retime_by_default=True)
    parser.add_argument("--out", type=Path, required=True, help="the folder to write")
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace a previous export in --out: only the files it wrote, unchanged since",
    )
    parser.add_argument(
        "--push-to-hub",
        metavar="REPO",
        help="then upload the verified folder to this Hub model repository (owner/name)",
    )
    parser.add_argument(
        "--private", action="store_true", help="with --push-to-hub: create the repository private"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autoslim.errors import ConfigError
    from autoslim.outputs.export import Selection, export, push_to_hub
    from autoslim.outputs.weights import weights_from

    if args.private and not args.push_to_hub:
        raise ConfigError("--private needs --push-to-hub REPO")

    study = open_study(args)
    chosen = args.prefer or args.weights is not None
    weights = weights_from(args.prefer, args.weights) if chosen else None
    args.retime = args.retime and args.trial is None  # a given trial is not chosen: no re-timing
    with show_progress(args):
        selection = Selection(
            trial=args.trial,
            weights=weights,
            max_ppl_increase=args.max_ppl_increase,
            tighten=tightened(args),
            retime=args.retime,
        )
        result = export(
            study,
            args.out,
            selection,
            force=args.force,
            protected=study_arg_files(args),
            hub_repo=args.push_to_hub,
        )
    pushed = (
        push_to_hub(result.folder, args.push_to_hub, private=args.private)
        if args.push_to_hub
        else None
    )
    outcome_final()  # the export is in place and verified: say so whatever comes
    summary = {
        "study": study.study_name,
        "folder": str(result.folder),
        "trial": result.trial,
        "recipe": result.recipe.to_params(),
        "recipe_summary": result.recipe.describe(),
        "chosen_because": result.reason,
        "stored_perplexity": result.stored_perplexity,
        "measured_perplexity": result.measured_perplexity,
        "relative_difference": result.relative_difference,
        "files": sorted(result.files),
        "kept": list(result.kept),
        "pushed_to": pushed,
    }
    if args.json:
        print_json("export", summary)
        return 0
    print(f"exported trial {result.trial} ({result.recipe.describe()}) to {result.folder}")
    print(f"  chosen because: {result.reason}")
    if result.kept:
        print(f"  kept, not written by the export: {', '.join(result.kept)}")
    print(
        f"  perplexity re-measured after reload: {result.measured_perplexity:.4f} "
        f"(stored {result.stored_perplexity:.4f}, {result.relative_difference:+.3%})"
    )
    from autoslim.runtimes import get_runtime

    print(f"  load it with: {get_runtime(result.recipe.runtime).load_line(str(result.folder))}")
    if pushed:
        print(f"  pushed to the Hub: {pushed}")
    return 0
