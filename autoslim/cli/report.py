"""``autoslim report``: write the study's Pareto report as one offline HTML page."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from autoslim.cli._study_args import add_study_args, open_study


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "report", help="write the study's Pareto fronts, knobs and trials as one HTML page"
    )
    add_study_args(parser)
    parser.add_argument(
        "--out",
        type=Path,
        help="the HTML file to write (default: report-STUDYNAME.html in the current folder)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autoslim.report import write_report

    study = open_study(args)
    out = args.out or Path(f"report-{re.sub(r'[^A-Za-z0-9_.-]', '_', study.study_name)}.html")
    path = write_report(study, out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, works offline)")
    print(f"open {path.resolve().as_uri()}")
    return 0
