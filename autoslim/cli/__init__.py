"""The ``autoslim`` command. The CLI package is the only place that prints.

Each subcommand lives in its own module with ``register(subparsers)``, which adds its parser
and sets ``func`` to a callable taking the parsed arguments and returning an exit status.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

from autoslim import __version__
from autoslim.cli import demo, doctor, export, init, measure, pick, report, search, worker, zoo
from autoslim.cli._common import DeferredParser, outcome_final
from autoslim.errors import AutoslimError

COMMANDS = (demo, init, search, worker, measure, zoo, report, pick, export, doctor)
# What a shell reports for a process ended by SIGPIPE (128 + 13): `autoslim pick | head -1`.
BROKEN_PIPE_STATUS = 141


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoslim",
        description="Search compression recipes for causal LMs and export the one you pick.",
    )
    parser.add_argument("--version", action="version", version=f"autoslim {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=DeferredParser
    )
    for command in COMMANDS:
        command.register(subparsers)
    for sub in subparsers.choices.values():  # -v after the subcommand too
        sub.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            default=argparse.SUPPRESS,
            help="log progress details",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    # bitsandbytes warns on every process that an optional faster CPU kernel is not installed.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    interrupt = signal.getsignal(signal.SIGINT)
    try:
        status: int = args.func(args)
        outcome_final()
        sys.stdout.flush()
    except AutoslimError as e:
        print(f"autoslim {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"autoslim {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away: stop quietly, and keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE_STATUS
    except Exception as e:
        from autoslim.search.integrity import storage_fault

        fault = storage_fault(e)
        if fault is None:
            raise
        print(f"autoslim {args.command}: error: {fault}", file=sys.stderr)
        return 2
    finally:
        if argv is not None:  # a caller in its own process keeps its Ctrl-C
            signal.signal(signal.SIGINT, interrupt)
    return status
