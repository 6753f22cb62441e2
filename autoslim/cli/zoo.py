"""``autoslim zoo train``: train the bundled reference model (or a miniature of it)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from autoslim.cli._common import print_json


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "zoo",
        help="the bundled reference model",
        description="Rebuild the bundled reference model (autoslim/zoo/reference) from scratch.",
    )
    zoo_sub = parser.add_subparsers(
        dest="zoo_command", metavar="ZOO_COMMAND", required=True, help="what to do"
    )
    train = zoo_sub.add_parser(
        "train",
        help="train the reference model from scratch (fixed seed and steps)",
        description="Train the reference model from scratch on the stdlib corpus with a fixed "
        "seed and step count, and write it with its model card facts.",
    )
    train.add_argument("--out", required=True, type=Path, help="folder to write the model to")
    train.add_argument(
        "--miniature", action="store_true", help="tiny shapes and 30 steps, for tests"
    )
    train.add_argument("--steps", type=int, help="override the number of training steps")
    train.add_argument("--json", action="store_true", help="print the model card facts as JSON")
    train.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    import dataclasses

    from autoslim.errors import ConfigError
    from autoslim.zoo.train import ZooConfig, train

    config = ZooConfig.miniature() if args.miniature else ZooConfig()
    if args.steps is not None:
        if args.steps < 1:
            raise ConfigError(f"--steps {args.steps}: must be at least 1")
        config = dataclasses.replace(config, steps=args.steps)
    if args.out.exists() and any(args.out.iterdir()):
        raise ConfigError(f"--out {args.out}: folder exists and is not empty; choose a new one")

    def progress(point: dict[str, Any]) -> None:
        if not args.json:
            print(
                f"step {point['step']}/{config.steps}  loss {point['train_loss']}  "
                f"eval ppl {point['eval_perplexity']}  {point['seconds']} s",
                flush=True,
            )

    facts = train(config, args.out, progress=progress)
    if args.json:
        print_json("zoo train", {k: v for k, v in facts.items() if k != "curve"})
    else:
        print(
            f"wrote {args.out}: held-out perplexity {facts['eval_perplexity']:.2f}, "
            f"{facts['parameters']:,} parameters, {facts['training_seconds']:.0f} s"
        )
    return 0
