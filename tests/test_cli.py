from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from autoslim.cli import main
from autoslim.recipe import Recipe


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autoslim", *args], capture_output=True, text=True, timeout=300
    )


def test_measure_reference_json(capsys):
    assert main(["measure", "--model", "reference", "--max-windows", "8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["schema_version"] == 1 and report["command"] == "measure"
    assert report["family"] == "qwen3"
    from autoslim.models import base_precision

    # the reference ships fp16 and loads in the device's native 16-bit type (bf16 here)
    precision = base_precision("reference", "auto", "cpu")
    assert report["recipe"] == Recipe(precision=precision).to_params()
    assert list(report["measurements"]) == ["base"]
    base = report["measurements"]["base"]
    assert base["scored_tokens"] == 8 * 255
    assert len(report["corpus_fingerprint"]) == 16
    assert base["perplexity"] > 1
    assert report["tokens_per_second"] > 0


def test_measure_prints_a_table(capsys):
    assert main(["measure", "--max-windows", "4"]) == 0
    out = capsys.readouterr().out
    for key in ("perplexity", "protocol", "fingerprint", "tokens/s"):
        assert key in out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model", "/does/not/exist"], "does not exist"),
        (["--text", "/does/not/exist.txt"], "exist.txt"),
        (["--window", "64", "--stride", "65"], "stride=65"),
        (["--window", "100000"], "window of at most 256"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, needle):
    proc = run_cli("measure", *args)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("name", "lines", "needle"),
    [("tiny.txt", 300, "is empty"), ("small.txt", 2000, "only 1 windows")],
)
def test_text_too_small_for_the_workload(tmp_path, name, lines, needle):
    # documents go to splits by a hash of their name: these two are known to land as named
    small = tmp_path / name
    small.write_text("".join(f"word {i}\n" for i in range(lines)))
    proc = run_cli("measure", "--text", str(small))
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert "give more text" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_every_subcommand_and_option_says_what_it_does():
    from autoslim.cli import build_parser

    parser = build_parser()
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {c.dest for c in commands._choices_actions} == set(commands.choices)
    for name, sub in commands.choices.items():
        assert sub.description, f"autoslim {name} has no description"
        sub.format_help()  # adds a deferred parser's arguments
        for action in sub._actions:
            assert action.help, f"autoslim {name} {action.option_strings or action.dest}"


def test_no_help_imports_torch_or_optuna():
    # every subcommand's --help, then the top-level one, in one interpreter
    probe = (
        "import argparse, contextlib, io, sys\n"
        "from autoslim.cli import build_parser, main\n"
        "(sub,) = (a for a in build_parser()._actions\n"
        "          if isinstance(a, argparse._SubParsersAction))\n"
        "for args in [[name, '--help'] for name in sub.choices] + [['--help']]:\n"
        "    try:\n"
        "        with contextlib.redirect_stdout(io.StringIO()):\n"
        "            main(args)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(len(sub.choices), sorted(m for m in ('torch', 'transformers', 'optuna')\n"
        "                               if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    count, imported = out.stdout.strip().split(" ", 1)
    assert int(count) >= 9 and imported == "[]", out.stdout


def test_init_writes_a_study_that_passes_check(tmp_path):
    made = subprocess.run(
        [sys.executable, "-m", "autoslim", "init", "mine"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stderr
    checked = run_cli("search", str(tmp_path / "mine.toml"), "--check")
    assert checked.returncode == 0, checked.stderr
    again = subprocess.run(
        [sys.executable, "-m", "autoslim", "init", "mine"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 2 and "--force" in again.stderr


def test_importing_modeling_code_after_autoslim_prints_no_torchao_noise():
    # transformers' quantizers import torchao, which warns about its CUDA-only libraries
    # and a deprecated torch registration on every CPU run; autoslim drops exactly those.
    probe = "import autoslim, transformers.modeling_utils, torchao.quantization"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True
    )
    assert "Failed to load" not in out.stderr
    assert "Enum subclass" not in out.stderr
    assert "Detected no triton" not in out.stderr
