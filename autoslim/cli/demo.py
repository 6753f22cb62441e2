"""``autoslim demo``: a small search on the bundled reference model, end to end, no arguments."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from autoslim import studies

# The bundled study the demo runs (autoslim/studies/demo.toml, package data).
DEMO = "demo"
DEMO_FILE = studies.path(DEMO)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="search compression recipes for the bundled reference model (about 10 minutes)",
        description=f"Copy the small bundled study {DEMO}.toml into --out, run it on the bundled "
        "reference model and show where everything is. Re-running it resumes the study.",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("autoslim-demo"), help="folder for the demo's files"
    )
    parser.add_argument(
        "--fresh", action="store_true", help="delete the demo's study first and start over"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autoslim.cli.search import run_search
    from autoslim.outputs.export import Selection, export
    from autoslim.outputs.report import write_report
    from autoslim.outputs.weights import PRESETS
    from autoslim.search import config as study_config
    from autoslim.search import study as search

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    study_file = out / f"{DEMO}.toml"
    db = out / f"{DEMO}.db"
    if args.fresh:
        db.unlink(missing_ok=True)
    if args.fresh or not study_file.exists():
        study_file.write_text(studies.read_text(DEMO), encoding="utf-8")
    config = study_config.load(study_file)
    started = time.monotonic()
    summary, study = run_search(config)
    savings = search.abort_savings(study)
    print(
        f"early abort: {savings.abandoned} recipes abandoned after the cheap stages in "
        f"{savings.seconds_spent:.0f} s, saving about {savings.seconds_saved:.0f} s of "
        "distillation and measurement"
    )
    overhead = summary.overhead_seconds
    if overhead:
        print(
            f"trial isolation: worker start {sum(summary.worker_setup_seconds):.1f} s, "
            f"{sum(overhead) / len(overhead):.2f} s per trial"
        )
    page = write_report(study, out / "report.html")
    balanced = Selection(weights=PRESETS["balanced"], retime=True)
    exported = export(study, out / "balanced", balanced, force=True)
    print(f"demo finished in {time.monotonic() - started:.0f} s")
    shown = os.path.relpath(study_file)
    print(
        f"study file   {shown} (a copy of autoslim's {DEMO}.toml; edit it and re-run to continue)"
    )
    print(f"study        {config.study.name!r} in {db}")
    print(f"dashboard    optuna-dashboard sqlite:///{db}")
    print(f"report       {os.path.relpath(page)} (open it in a browser; works offline)")
    print(
        f"export       {os.path.relpath(exported.folder)}: trial {exported.trial} "
        f"({exported.recipe.describe()}), the balanced pick; perplexity "
        f"{exported.measured_perplexity:.3f} re-measured, {exported.stored_perplexity:.3f} stored"
    )
    print(f"             {exported.reason}")
    print(f"pick         autoslim pick {shown} --prefer time|energy|balanced")
    return 0
