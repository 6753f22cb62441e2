from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

FAKE = "tests.study.fakes:FakeObjective"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Qwen3 config (2 layers, 4 query / 2 kv heads) without weights: enough to validate."""
    from transformers import AutoConfig

    from autoslim.testing import TINY_CONFIGS, TINY_VOCAB

    folder = tmp_path_factory.mktemp("tiny-qwen3")
    AutoConfig.for_model("qwen3", vocab_size=TINY_VOCAB, **TINY_CONFIGS["qwen3"]).save_pretrained(
        folder
    )
    return folder


def toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


# The smallest workload a real trial measures: one short prefill, two decode tokens, one run.
TINY_WORKLOAD: dict[str, Any] = {
    "prefill_windows": 1,
    "prefill_batch": 1,
    "decode_tokens": 2,
    "decode_prompt_tokens": 8,
    "warmup": 0,
    "repeats": 1,
    "protocol": {"window": 64, "max_windows": 4},
}


def write_study(folder: Path, tables: dict[str, dict[str, Any]], name: str = "s") -> Path:
    """A study file from ``{table: {key: value}}`` (JSON values are valid TOML here)."""
    lines = []
    for table, values in tables.items():
        lines.append(f"[{table}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
    path = folder / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture()
def study_file(tmp_path: Path, tiny_model_dir: Path):
    """Make a small study file on the tiny model; keyword tables override the defaults (a
    value of None leaves that key out)."""

    def make(name: str = "s", **tables: dict[str, Any]) -> Path:
        base: dict[str, dict[str, Any]] = {
            "study": {"n_trials": 3, "trial_timeout_seconds": 60},
            "model": {"name": str(tiny_model_dir)},
            "workload": {"protocol": {"window": 128}},  # the tiny model's whole context
            "search": {
                "drop_heads_per_layer": [0, 2],
                "kd_steps": [0, 20],
                "runtime": ["torch"],  # the harness under test, not the engines
                "precision": ["fp32"],
                "bits": [16, 8, 4],
                "quant_backend": ["bitsandbytes"],
            },
        }
        for table, values in tables.items():
            merged = {**base.get(table, {}), **values}
            base[table] = {key: value for key, value in merged.items() if value is not None}
        return write_study(tmp_path, base, name)

    return make


def run_fake_study(
    path: Path, env: dict[str, str] | None = None, worker_id: int = 0, **popen: Any
) -> Any:
    """Start ``run_study`` on the fake objective in a real, separate process (what
    ``autoslim worker`` runs, with the fake objective)."""
    import os

    code = (  # check_model=False: the model checks import torch, slow on a busy machine
        "import sys; from autoslim.search import config, study; "
        "study.run_study(config.load(sys.argv[1], check_model=False), "
        f"objective={FAKE!r}, worker_id=int(sys.argv[2]))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, str(path), str(worker_id)],
        env={**os.environ, **(env or {})},
        **popen,
    )


def postgres_url() -> str | None:
    """The local PostgreSQL server's test database (127.0.0.1:5432, trust auth), if up."""
    try:
        import psycopg2
    except ImportError:
        return None
    for user in ("postgres", "root"):
        try:
            psycopg2.connect(
                host="127.0.0.1", port=5432, user=user, dbname="test", connect_timeout=3
            ).close()
        except psycopg2.OperationalError:
            continue
        return f"postgresql://{user}@127.0.0.1:5432/test"
    return None
