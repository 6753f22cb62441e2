"""``autoslim init NAME``: write a commented study file ``NAME.toml`` to start from."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "init",
        help="write a commented study file NAME.toml in the current folder",
        description="Write NAME.toml in the current folder: autoslim's commented example study "
        "(every key, with the values worth starting from) for --model on --device. Edit it, "
        "then `autoslim search NAME.toml --check` and `autoslim search NAME.toml`.",
    )
    parser.add_argument("name", metavar="NAME", help="the study's name (letters, digits, -_.)")
    parser.add_argument(
        "--model",
        default="reference",
        help="'reference' (bundled, the default), a local Hugging Face folder, or a hub id",
    )
    parser.add_argument(
        "--device", default="cpu", help="where trials run: cpu (default), cuda, cuda:1, mps"
    )
    parser.add_argument("--force", action="store_true", help="replace NAME.toml if it exists")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autoslim import studies
    from autoslim.errors import ConfigError

    context = None
    if args.model == "reference" or Path(args.model).is_dir():
        # a model on disk: its context bounds the perplexity window (a hub id is checked by
        # `search --check`, where the hub is reachable)
        from autoslim.models import load_config
        from autoslim.protocol import context_length

        context = context_length(load_config(args.model))
    text = studies.init_text(args.name, model=args.model, device=args.device, context=context)
    path = Path(f"{args.name}.toml")
    if path.exists() and not args.force:
        raise ConfigError(f"{path} exists; pass --force to replace it or choose another NAME")
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path.resolve()}; next: autoslim search {path} --check")
    return 0
