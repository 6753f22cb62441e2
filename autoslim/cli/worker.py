"""``autoslim worker STUDY``: one more process on an existing study, from any machine.

STUDY is the study file (its storage and name are used) or the storage URL of a study that
``autoslim search`` (or another worker with the study file) created; from a URL the worker
runs the configuration the study stored. Every worker shares the study's trial budget.
"""

from __future__ import annotations

import argparse
import secrets
from dataclasses import replace
from typing import Any

from autoslim.cli._common import print_json
from autoslim.cli._study_args import add_study_args

# Worker ids drawn when none is given stay below this (distinct seeds, no coordination).
RANDOM_WORKER_IDS = 2**31


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="join an existing study and run its trials alongside other workers",
        description="Run trials of a study other processes or machines work on too (a "
        "journal:/// file on one machine, postgresql:// across machines). The study's "
        "n_trials is the budget of all workers together; a worker that dies mid-trial has "
        "its trial failed and retried by another after the heartbeat grace period.",
    )
    add_study_args(parser)
    parser.add_argument(
        "--worker-id",
        type=int,
        help="this worker's number, which seeds its sampler (study seed + id); default: a "
        "random id, so workers started alike still sample differently",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autoslim.cli.search import run_search, summary_dict

    worker_id = args.worker_id
    if worker_id is None:
        worker_id = secrets.randbelow(RANDOM_WORKER_IDS)
    summary, study = run_search(load_config(args), quiet=args.json, worker_id=worker_id)
    if args.json:
        print_json("worker", {**summary_dict(summary, study), "worker_id": worker_id})
    return 0


def load_config(args: argparse.Namespace) -> Any:
    """The study's configuration: the study file's, or the one stored in the study."""
    from autoslim.cli._study_args import open_study, storage_of
    from autoslim.search import config
    from autoslim.search.storage import check_driver
    from autoslim.search.trials import stored_config

    if args.study.endswith(".toml"):
        loaded = config.load(args.study)
        check_driver(loaded.study.storage)
        return loaded
    study = open_study(args)
    stored = stored_config(study)
    url = storage_of(args.study)[0]
    return replace(stored, study=replace(stored.study, name=study.study_name, storage=url))
