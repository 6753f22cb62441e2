"""What scaling out ships: the container files (parsed, not built: no Docker daemon in CI) and
the GPU check's plan (its --dry-run)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from autoslim.search import config

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = yaml.safe_load((DOCKER / "compose.yaml").read_text())
IMAGES = {"cpu": DOCKER / "Dockerfile", "cuda": DOCKER / "Dockerfile.cuda"}


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines()]
    steps = [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return [(op, args) for op, args in steps[last_from:]]


def test_images_install_the_wheel_as_a_non_root_user() -> None:
    for kind, path in IMAGES.items():
        steps = _instructions(path)
        ops = dict(steps)
        assert ops["USER"] != "root", kind
        assert ops["ENTRYPOINT"] == '["autoslim-entrypoint"]', kind
        assert any(op == "COPY" and args.startswith("--from=wheel") for op, args in steps)
        installs = [args for op, args in steps if op == "RUN" and "pip install" in args]
        assert any("autoslim-*.whl)[postgres]" in args for args in installs), kind
        assert not any("-e ." in args for args in installs), kind
        # the runtime stage copies no source tree: only the wheel and the entrypoint
        copies = [args for op, args in steps if op == "COPY"]
        assert all(a.startswith("--from=wheel") or "entrypoint" in a for a in copies), kind
    cuda = _instructions(IMAGES["cuda"])
    assert cuda[0][1].startswith("nvidia/cuda:")
    assert any("download.pytorch.org/whl/cu" in args for op, args in cuda if op == "RUN")


def test_dockerignore_keeps_the_venv_git_and_studies_out_of_the_context() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for pattern in (".venv", ".git", "**/*.db"):
        assert pattern in ignored


def test_compose_runs_gpu_workers_on_postgresql_with_the_password_in_a_secret() -> None:
    services = COMPOSE["services"]
    assert set(services) >= {"postgres", "worker", "report"}
    postgres = services["postgres"]
    assert postgres["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    assert "postgres-data:/var/lib/postgresql/data" in postgres["volumes"]
    assert COMPOSE["secrets"]["postgres_password"]["file"] == "./postgres_password.txt"

    worker = services["worker"]
    assert worker["build"]["dockerfile"] == "docker/Dockerfile.cuda"
    assert worker["command"][:2] == ["worker", "/studies/cluster.toml"]
    assert worker["secrets"] == ["postgres_password"]
    (gpu,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"] and gpu["count"] == 1
    assert "hf-cache:/data/huggingface" in worker["volumes"]
    assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"

    report = services["report"]
    out = report["command"][report["command"].index("--out") + 1]
    assert report["command"][0] == "report" and out.startswith("/reports/")
    assert "reports:/reports" in report["volumes"]
    assert set(COMPOSE["volumes"]) >= {"postgres-data", "hf-cache", "reports"}


def test_no_secret_is_inlined_anywhere() -> None:
    """No password in the compose file, the images or the study file the workers run."""
    for service in COMPOSE["services"].values():
        env = service.get("environment", {})
        assert not any("PASSWORD" in key and not key.endswith("_FILE") for key in env)
    for path in [*IMAGES.values(), DOCKER / "compose.yaml"]:
        assert not re.search(r"PGPASSWORD=\S|://[^/\s]*:[^@/\s]+@", path.read_text()), path
    study = config.load(DOCKER / "cluster.toml", check_model=False)  # refuses a password
    assert study.study.storage.startswith("postgresql://autoslim@postgres:5432/")
    mounted = {v.split(":")[0] for s in COMPOSE["services"].values() for v in s["volumes"]}
    assert "./cluster.toml" in mounted


def test_entrypoint_reads_the_secret_file_and_runs_autoslim() -> None:
    script = (DOCKER / "entrypoint.sh").read_text()
    assert "/run/secrets/postgres_password" in script and 'exec autoslim "$@"' in script
    assert (DOCKER / "entrypoint.sh").stat().st_mode & 0o111


def test_gpu_check_plan_is_valid_without_a_gpu() -> None:
    """bench/gpu_check.py --dry-run: its study file validates, its OOM objective imports."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert "study: 4 trials on reference (cuda)" in done.stdout
    assert "objective: OomAtFourBits (importable)" in done.stdout
    assert "nf4" in done.stdout and "[torchao]" in done.stdout
