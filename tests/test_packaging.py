"""`pip install autoslim` is enough: the wheel carries the bundled studies and reference model,
and an installed copy writes, checks and runs a study from any folder."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from autoslim import studies
from autoslim.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_root_studies_are_the_bundled_files():
    # studies/ at the repository root links to the package data: one copy of each file
    for name in studies.names():
        link = ROOT / "studies" / f"{name}.toml"
        assert link.read_text(encoding="utf-8") == studies.read_text(name)
        assert link.is_symlink()


def test_init_text_is_the_commented_example_with_name_model_and_device():
    text = studies.init_text("mine", model="Qwen/Qwen3-0.6B", device="cuda")
    raw = tomllib.loads(text)
    assert raw["study"]["name"] == "mine"
    assert raw["model"] == {
        **tomllib.loads(studies.read_text(studies.TEMPLATE))["model"],
        "name": "Qwen/Qwen3-0.6B",
        "device": "cuda",
    }
    # every comment of the example's body is kept
    example = studies.read_text(studies.TEMPLATE)
    comments = [line.split("#", 1)[1] for line in example.splitlines()[5:] if "#" in line]
    assert all(c.replace("example-llama", "mine") in text for c in comments)


def test_init_shortens_the_window_to_the_model_context():
    text = studies.init_text("mine", context=256)
    assert tomllib.loads(text)["workload"]["protocol"]["window"] == 256
    long = studies.init_text("mine", context=100_000)
    assert long.count("window = ") == studies.read_text(studies.TEMPLATE).count("window = ")
    assert (
        tomllib.loads(long)["workload"]["protocol"]
        == tomllib.loads(studies.read_text(studies.TEMPLATE))["workload"]["protocol"]
    )


def test_init_rejects_a_name_a_study_cannot_have():
    with pytest.raises(ConfigError, match="use letters, digits"):
        studies.init_text("my study")


def test_wheel_installs_and_runs_from_another_folder(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(ROOT),
        ],
        check=True,
    )
    (wheel,) = wheels.glob("autoslim-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    for name in studies.names():
        assert f"autoslim/studies/{name}.toml" in shipped
    for path in (ROOT / "autoslim" / "zoo" / "reference").iterdir():
        assert f"autoslim/zoo/reference/{path.name}" in shipped

    # a fresh venv that sees this one's dependencies (torch, transformers, optuna ...) but
    # not its autoslim: only the wheel's copy can be imported there
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    fresh_site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "-q",
            str(wheel),
        ],
        check=True,
        env=env,
    )
    # only now, so pip never sees (nor touches) this venv's own autoslim
    Path(fresh_site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "elsewhere"
    work.mkdir()

    def autoslim(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [venv / "bin" / "autoslim", *args],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    where = subprocess.run(
        [python, "-c", "import autoslim; print(autoslim.__file__)"],
        cwd=work,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert where.startswith(fresh_site)
    made = autoslim("init", "mine")
    assert made.returncode == 0, made.stderr
    checked = autoslim("search", "mine.toml", "--check")
    assert checked.returncode == 0, checked.stderr
    assert "valid" in checked.stdout
    shown = autoslim("demo", "--help")
    assert shown.returncode == 0 and "bundled study demo.toml" in shown.stdout
