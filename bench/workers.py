"""Does a study go faster with more workers? Trials per minute, 1 vs 4 workers, per storage.

Each worker is a real ``run_study`` process (what ``autoslim worker`` runs) on the stub
objective of the study tests, which sleeps ``--sleep`` seconds per trial and uses no CPU, so
the figure is what the storage and the study loop allow, not a model's cost. Throughput is
counted trials over the span from the first trial's start to the last one's end (process start
is reported apart). PostgreSQL is the local server (127.0.0.1:5432, database ``test``); it is
skipped with the reason when unreachable. SQLite is shown for one worker only: it is the
one-process storage (several processes on it wait on its file lock).

    .venv/bin/python bench/workers.py [--trials 16] [--sleep 0.5] [--workers 1 4]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoslim.search import storage, study
from tests.study.conftest import postgres_url, run_fake_study, write_study

SEARCH = {"bits": [16, 8, 4], "kd_steps": [0, 10, 20, 30, 40], "drop_heads_per_layer": [0, 2]}


def _urls(folder: Path) -> dict[str, str | None]:
    return {
        "sqlite": f"sqlite:///{folder / 'bench.db'}",
        "journal": f"journal:///{folder / 'bench.log'}",
        "postgresql": postgres_url(),
    }


def measure(url: str, workers: int, trials: int, sleep: float, folder: Path) -> dict[str, float]:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    path = write_study(
        folder,
        {
            "study": {"name": name, "storage": url, "n_trials": trials, "heartbeat_seconds": 5},
            "model": {"name": "reference"},
            "search": SEARCH,
        },
        name,
    )
    started = time.monotonic()
    procs = [
        run_fake_study(path, {"AUTOSLIM_FAKE_SLEEP": str(sleep)}, worker_id=i)
        for i in range(workers)
    ]
    codes = [p.wait(600) for p in procs]
    wall = time.monotonic() - started
    opened = storage.make_storage(url)
    done = [
        t
        for t in optuna.load_study(study_name=name, storage=opened).get_trials(deepcopy=False)
        if study.counts_toward_total(t)
    ]
    if url.startswith("postgresql"):
        optuna.delete_study(study_name=name, storage=opened)
    first = min(t.datetime_start for t in done if t.datetime_start)
    last = max(t.datetime_complete for t in done if t.datetime_complete)
    span = (last - first).total_seconds()
    return {
        "ok": float(codes == [0] * workers),
        "trials": len(done),
        "per_minute": 60 * len(done) / span,
        "span": span,
        "startup": wall - span,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--sleep", type=float, default=0.5, help="seconds per stub trial")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(
        f"{args.trials} trials of {args.sleep:g} s each; {os.cpu_count()} CPUs, load "
        f"{os.getloadavg()[0]:.1f} at start (ideal: {60 / args.sleep:.0f} trials/min/worker)"
    )
    print(f"{'storage':<11} {'workers':>7} {'trials/min':>10} {'span s':>7} {'startup s':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for kind, url in _urls(Path(tmp)).items():
            if url is None:
                print(f"{kind:<11} skipped: 127.0.0.1:5432 database 'test' unreachable")
                continue
            for n in args.workers:
                if kind == "sqlite" and n > 1:
                    continue
                folder = Path(tempfile.mkdtemp(dir=tmp))
                r = measure(
                    url.replace("bench.", f"bench{n}."), n, args.trials, args.sleep, folder
                )
                flag = "" if r["ok"] else "  (a worker exited non-zero)"
                print(
                    f"{kind:<11} {n:>7} {r['per_minute']:>10.1f} {r['span']:>7.1f} "
                    f"{r['startup']:>9.1f}{flag}"
                )
    print(f"load {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
