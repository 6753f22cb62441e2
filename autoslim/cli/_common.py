"""Arguments and output helpers shared by subcommands."""

from __future__ import annotations

import argparse
import json
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from autoslim.errors import ConfigError
from autoslim.recipe import KNOBS, Recipe, knob_groups

if TYPE_CHECKING:
    from autoslim.protocol import PerplexityProtocol, Workload


class DeferredParser(argparse.ArgumentParser):
    """A subcommand parser that adds its arguments only when it parses or shows its help.

    ``add_parser(NAME, ..., arguments=ADD)`` calls ``ADD(parser)`` then, so what the arguments'
    defaults need (the workload's defaults import torch) is imported only for that subcommand:
    ``autoslim --help`` and every other subcommand start without it.
    """

    def __init__(
        self,
        *args: Any,
        arguments: Callable[[argparse.ArgumentParser], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._arguments = arguments

    def _add_deferred(self) -> None:
        if self._arguments is not None:
            add, self._arguments = self._arguments, None
            add(self)

    def parse_known_args(self, *args: Any, **kwargs: Any) -> Any:
        self._add_deferred()
        return super().parse_known_args(*args, **kwargs)

    def format_help(self) -> str:
        self._add_deferred()
        return super().format_help()

    def format_usage(self) -> str:
        self._add_deferred()
        return super().format_usage()


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="reference",
        help="'reference' (bundled), a local Hugging Face folder, or a hub id",
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow the model's own Python code to run (off by default)",
    )


def add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--text", nargs="+", metavar="PATH", help="your own UTF-8 text files instead of the stdlib"
    )
    parser.add_argument(
        "--dataset", help="a Hugging Face dataset 'path[:config]' (needs `datasets` and a hub)"
    )


def add_protocol_args(parser: argparse.ArgumentParser) -> None:
    from autoslim.protocol import PerplexityProtocol

    default = PerplexityProtocol()
    parser.add_argument("--window", type=int, default=default.window, help="tokens per window")
    parser.add_argument(
        "--stride", type=int, default=0, help="tokens between window starts (0 = window)"
    )
    parser.add_argument(
        "--max-windows",
        type=int,
        default=default.max_windows,
        help="evenly spaced windows scored (0 = all)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=default.batch_size,
        help=f"windows scored per forward pass (default {default.batch_size})",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def protocol_from(args: argparse.Namespace) -> PerplexityProtocol:
    from autoslim.protocol import PerplexityProtocol

    return PerplexityProtocol(
        window=args.window,
        stride=args.stride,
        max_windows=args.max_windows or None,
        batch_size=args.batch_size,
    )


def add_workload_args(parser: argparse.ArgumentParser) -> None:
    """The timed workload (prefill + decode, warm-up, repeats) and the energy meter."""
    from dataclasses import fields

    from autoslim.protocol import Workload, counts

    default = Workload()
    group = parser.add_argument_group("timed workload")
    group.add_argument(
        "--energy",
        choices=("auto", "nvml", "rapl", "estimate"),
        default="auto",
        help="energy meter; auto falls back to a labelled estimate (default auto)",
    )
    for spec in fields(Workload):
        if spec.name in counts():
            flag = "--" + spec.name.replace("_", "-")
            help_text = spec.metadata["help"]
            group.add_argument(flag, type=int, default=getattr(default, spec.name), help=help_text)


def workload_from(args: argparse.Namespace) -> Workload:
    from autoslim.protocol import Workload, counts

    return Workload(
        protocol=protocol_from(args), **{name: getattr(args, name) for name in counts()}
    )


def add_recipe_args(parser: argparse.ArgumentParser) -> None:
    """One flag per declared knob (dest = the knob; unset flags keep its default)."""
    for owner, doc, knobs in knob_groups():
        group = parser.add_argument_group(f"recipe: {owner}", doc)
        for knob in knobs:
            help_text = f"{knob.doc} (default {knob.to_param(knob.default)!r})"
            if knob.type is bool:
                group.add_argument(
                    knob.flag,
                    dest=knob.name,
                    action=argparse.BooleanOptionalAction,
                    default=None,
                    help=help_text,
                )
                continue
            group.add_argument(
                knob.flag,
                dest=knob.name,
                type=str if knob.type is tuple else knob.type,
                choices=knob.choices or None,
                metavar=knob.metavar,
                help=help_text,
            )
    parser.add_argument("--seed", type=int, default=0, help="seed of the build (default 0)")


def recipe_from_args(args: argparse.Namespace, **defaults: Any) -> Recipe:
    """The recipe given by the recipe flags (``defaults`` for knobs not given)."""
    given = {name: getattr(args, name) for name in KNOBS if getattr(args, name, None) is not None}
    recipe = Recipe.from_params({**defaults, **given})
    for name in given.keys() - recipe.active_params().keys():
        knob = KNOBS[name]
        raise ConfigError(
            f"{knob.flag} {given[name]}: this recipe does not use it ({knob.doc}); drop it, or "
            "give the flags it needs"
        )
    return recipe


def outcome_final() -> None:
    """The command's work is done (and about to be, or being, printed): from now on Ctrl-C is
    ignored, so a late one (while printing, flushing or while Python shuts down) cannot turn
    the outcome into "interrupted" (exit 130) or a traceback. ``main`` restores the handler
    for a caller in its own process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# The version of the one ``--json`` shape every subcommand prints (README: "JSON output").
JSON_SCHEMA_VERSION = 1


def json_document(command: str, body: dict[str, Any]) -> dict[str, Any]:
    """``{"schema_version": 1, "command": COMMAND, ...body}``: every ``--json`` output."""
    return {"schema_version": JSON_SCHEMA_VERSION, "command": command, **body}


def print_json(command: str, body: dict[str, Any]) -> None:
    """One strict JSON document: a NaN or infinite figure is the string ``"nan"`` / ``"inf"``."""
    from autoslim.measure.measurement import jsonable

    document = jsonable(json_document(command, body))
    print(json.dumps(document, indent=2, sort_keys=False, default=str, allow_nan=False))


def print_table(rows: list[tuple[str, Any]]) -> None:
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
