"""What depends on the CPU class, run once per class with its flags faked: the precisions it
computes natively, the bundled studies and `init`'s file, and the search space a study keeps
when workers on other CPUs join it."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest

from autoslim import precisions, studies
from autoslim.cli import main
from autoslim.errors import ConfigError
from autoslim.search import config
from autoslim.testing.cpu import fake_cpu

NATIVE = {
    "avx2": ["fp32"],
    "avx512": ["fp32"],
    "avx512_bf16": ["fp32", "bf16"],
    "amx": ["fp32", "bf16", "fp16"],
}
# What a space with torchao int8 searches when it leaves precision out: fp16 is native on AMX
# but torchao's int8 kernels overflow in it (inf perplexity), so it is left out there.
WITH_TORCHAO_INT8 = {name: [p for p in native if p != "fp16"] for name, native in NATIVE.items()}


def test_each_class_computes_the_precisions_its_flags_name(cpu_class: str) -> None:
    assert precisions.supported("cpu") == NATIVE[cpu_class]


@pytest.mark.parametrize("name", ["demo", "smollm2", "example-task"])
def test_bundled_cpu_studies_check_on_every_class(cpu_class: str, name: str) -> None:
    loaded = config.load(studies.path(name))  # the model checks of `search --check`
    listed = name == "example-task"  # lists fp32 alone; the others leave precision out
    wanted = ["fp32"] if listed else WITH_TORCHAO_INT8[cpu_class]
    assert loaded.search["precision"].values() == wanted
    assert ("precision" in loaded.derive) is not listed


def test_init_writes_a_study_every_class_checks(
    cpu_class: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["init", "mine", "--device", "cpu"]) == 0
    searched = config.load(tmp_path / "mine.toml").search["precision"].values()
    assert searched == WITH_TORCHAO_INT8[cpu_class]


def _study_file(tmp_path: Path, search: str = "") -> Path:
    file = tmp_path / "s.toml"
    file.write_text(f'[study]\nn_trials = 3\n[model]\nname = "reference"\n[search]\n{search}')
    return file


def test_a_listed_precision_the_cpu_lacks_is_one_line_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = _study_file(tmp_path, 'precision = ["bf16"]\n')
    with fake_cpu("avx512"):
        assert main(["search", str(file), "--check"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "search.precision: 'bf16' on cpu" in err
    assert "none of avx512_bf16, amx_bf16" in err and "computes fp32 natively" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]  # nothing written
    with fake_cpu("avx512_bf16"):
        assert config.load(file).search["precision"].values() == ["bf16"]


def test_the_space_a_study_derives_is_kept_by_workers_on_other_cpus(tmp_path: Path) -> None:
    from autoslim.search import study

    file = _study_file(tmp_path)
    with fake_cpu("avx512_bf16"):
        first = config.load(file)
        storage = study.make_storage(first.study.storage)
        created, _ = study.open_study(first, storage)
    derived = created.user_attrs["derived_search"]
    assert derived["precision"] == ["fp32", "bf16"]
    with fake_cpu("amx"):  # computes more, searches what the study was created with
        _, joined = study.open_study(config.load(file), storage)
        assert joined.search["precision"].values() == ["fp32", "bf16"]
    with (
        fake_cpu("avx512"),
        pytest.raises(ConfigError, match=re.escape("searches precision 'bf16'")) as refused,
    ):
        study.open_study(config.load(file), storage)
    assert "derived from the device of the worker that created it" in str(refused.value)
    assert "none of avx512_bf16, amx_bf16" in str(refused.value)
    assert (
        optuna.load_study(study_name="s", storage=storage).user_attrs["derived_search"] == derived
    )
