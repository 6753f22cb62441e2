"""``autoslim report``: write the study's Pareto report as one offline HTML page."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from autoslim.cli._common import print_json
from autoslim.cli._study_args import add_study_args, open_study


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write the study's Pareto fronts, knobs and trials as one HTML page",
        description="Write one offline HTML page: Pareto fronts per pair of objectives, knobs "
        "against objectives, parameter importances, history and a table of every trial.",
    )
    add_study_args(parser)
    parser.add_argument(
        "--out",
        type=Path,
        help="the HTML file to write (default: report-STUDYNAME.html in the current folder)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object (the page is still written)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autoslim.outputs.report import empty_notice, get_summary_info, write_report
    from autoslim.search.trials import best_records

    study = open_study(args)
    from autoslim.search.config import MAX_STUDY_NAME

    # a study another tool created may have any name: cut to what a file name can hold
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", study.study_name)[:MAX_STUDY_NAME]
    out = args.out or Path(f"report-{safe}.html")
    path = write_report(study, out)
    if args.json:
        summary = get_summary_info(study)
        budget = summary.budget
        print_json(
            "report",
            {
                "study": summary.study_name,
                "path": str(path),
                "size_bytes": path.stat().st_size,
                "model": summary.model,
                "objectives": list(summary.objective_names),
                "max_perplexity": None if budget is None else budget.max_perplexity,
                "states": dict(summary.state_counts),
                "pareto": [r.to_dict() for r in best_records(study)],
                "balanced_pick": summary.choice,
            },
        )
        return 0
    notice = empty_notice(get_summary_info(study))
    if notice is not None:
        print(f"notice: {notice}")
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, works offline)")
    print(f"open {path.resolve().as_uri()}")
    return 0
