"""How long does `autoslim --help` take, and what does it import? Run each command line N times
(interleaved) in a fresh interpreter and print median, min and max wall seconds, the child's
CPU seconds and the machine's load average, then the heavy modules a plain `--help` imports.

    .venv/bin/python bench/cli_startup.py            # 7 runs of each command line
    .venv/bin/python bench/cli_startup.py --runs 15

No subcommand's `--help` imports torch or Optuna: the defaults it shows come from plain-data
modules (`autoslim/protocol.py`, `autoslim/outputs/weights.py`, `autoslim/search/budgets.py`), and
`measure`, `pick` and `export` add their many arguments only when asked for.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

COMMANDS = (
    ("--help",),
    ("search", "--help"),
    ("init", "--help"),
    ("pick", "--help"),
    ("export", "--help"),
    ("report", "--help"),
    ("measure", "--help"),
)
HEAVY = ("torch", "transformers", "optuna", "numpy", "plotly", "sqlalchemy")


def timed(argv: tuple[str, ...]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one `python -m autoslim ARGV`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "autoslim", *argv], check=True, stdout=subprocess.DEVNULL
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def imported_by_help() -> list[str]:
    probe = (
        "import sys\n"
        "from autoslim.cli import build_parser\n"
        "build_parser().format_help()\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True)
    return out.stdout.decode().split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs of each command line")
    args = parser.parse_args()
    walls: dict[tuple[str, ...], list[float]] = {c: [] for c in COMMANDS}
    cpus: dict[tuple[str, ...], list[float]] = {c: [] for c in COMMANDS}
    load_before = os.getloadavg()[0]
    for _ in range(args.runs):
        for command in COMMANDS:
            wall, cpu = timed(command)
            walls[command].append(wall)
            cpus[command].append(cpu)
    load_after = os.getloadavg()[0]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.runs} runs each")
    print(f"load average (1 min) {load_before:.2f} before, {load_after:.2f} after")
    for command in COMMANDS:
        w, c = walls[command], cpus[command]
        print(
            f"autoslim {' '.join(command):<16} median {statistics.median(w):6.3f} s  "
            f"min {min(w):6.3f}  max {max(w):6.3f}  CPU median {statistics.median(c):6.3f} s"
        )
    print("heavy modules `autoslim --help` imports:", ", ".join(imported_by_help()) or "none")


if __name__ == "__main__":
    main()
