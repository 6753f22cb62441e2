"""The recipe flags shared by commands (autoslim/cli/_common.py) and their errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from autoslim.cli import main
from autoslim.cli._common import add_recipe_args, recipe_from_args
from autoslim.recipe import Recipe
from autoslim.testing import save_tiny_model


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_recipe_args(parser)
    return parser.parse_args(argv)


def test_flags_build_the_recipe() -> None:
    args = _parse(
        [
            "--bits",
            "4",
            "--quant-type",
            "fp4",
            "--no-double-quant",
            "--precision",
            "bf16",
            "--drop-layers",
            "1",
            "--prune-importance",
            "activation",
            "--prune-ratio",
            "0.3",
            "--drop-heads",
            "0:1,2:5",
            "--kd-steps",
            "50",
            "--kd-temperature",
            "3",
            "--kd-alpha",
            "0.2",
            "--kd-lr",
            "1e-4",
            "--seed",
            "7",
        ]
    )
    assert recipe_from_args(args) == Recipe(
        bits=4,
        quant_type="fp4",
        double_quant=False,
        precision="bf16",
        drop_layers=1,
        prune_importance="activation",
        prune_ratio=0.3,
        drop_heads=((0, 1), (2, 5)),
        kd_steps=50,
        kd_temperature=3.0,
        kd_alpha=0.2,
        kd_lr=1e-4,
    )
    assert args.seed == 7
    assert recipe_from_args(_parse([])) == Recipe()
    assert recipe_from_args(_parse(["--drop-heads-per-layer", "2"])).drop_heads_per_layer == 2


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model("gpt2", tmp_path_factory.mktemp("gpt2"))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--prune-ratio", "1.5"], "prune_ratio=1.5: must be a number >= 0 and < 1"),
        (["--drop-heads", "0:x"], "drop_heads entry '0:x'"),
        (["--drop-heads", "0:9"], "drop_heads is not supported for gpt2"),
        (["--kd-steps", "-1"], "kd_steps=-1"),
        (["--kd-steps", "1", "--kd-temperature", "20"], "kd_temperature=20.0: must be a number"),
        (["--drop-layers", "2"], "drop_layers=2"),
    ],
)
def test_bad_values_exit_2_with_one_line_before_any_work(
    flags: list[str], message: str, gpt2_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["measure", "--model", str(gpt2_folder), *flags]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert message in captured.err
