from __future__ import annotations

import os
from pathlib import Path

import pytest

from autoslim.errors import ConfigError
from autoslim.search import config


def test_defaults_and_storage_beside_the_file(study_file) -> None:
    path = study_file("mine")
    c = config.load(path)
    assert c.study.name == "mine"
    assert c.study.storage == f"sqlite:///{path.parent.absolute() / 'mine.db'}"
    assert c.objectives == ("perplexity", "seconds", "joules")
    assert c.study.sampler == "tpe"
    assert c.search["prune_ratio"].range is not None
    assert not (path.parent / "mine.db").exists()
    assert c.to_dict()["search"]["kd_steps"] == [0, 20]


def test_overrides_take_precedence(study_file) -> None:
    c = config.load(study_file(), overrides={"study": {"n_trials": 7}})
    assert c.study.n_trials == 7


@pytest.mark.parametrize(
    ("tables", "needles"),
    [
        ({"study": {"n_trails": 3}}, ["study.n_trails", "unknown key", "n_trials"]),
        ({"bogus": {"x": 1}}, ["bogus", "unknown key"]),
        ({"study": {"n_trials": "ten"}}, ["study.n_trials", "'ten'", "integer"]),
        ({"study": {"sampler": "cmaes"}}, ["study.sampler", "tpe"]),
        (
            {"search": {"prune_ratio": {"low": 0.5, "high": 0.1}}},
            ["search.prune_ratio.high", "swap"],
        ),
        (
            {"search": {"prune_ratio": {"low": 0.2, "high": 0.2}}},
            ["search.prune_ratio.high", "empty"],
        ),
        (
            {"search": {"prune_ratio": {"low": 0.0, "high": 1.5}}},
            ["search.prune_ratio.high", "must be a number >= 0 and < 1"],
        ),
        (
            {"search": {"prune_ratio": {"low": 0.0, "hi": 0.5}}},
            ["search.prune_ratio.hi", "unknown"],
        ),
        ({"search": {"bits": []}}, ["search.bits", "empty"]),
        ({"search": {"bits": [16, 3]}}, ["search.bits[1]", "bits=3"]),
        ({"search": {"bits": {"low": 4, "high": 16}}}, ["search.bits", "list of choices"]),
        ({"search": {"kd_steps": {"low": 0, "high": 20.5}}}, ["search.kd_steps.high", "integer"]),
        (
            {"search": {"drop_heads": ["0:9"], "drop_heads_per_layer": [0]}},
            ["drop heads 0:9", "does not exist", "heads 0..3"],
        ),
        (
            {"search": {"drop_heads": ["5:0"], "drop_heads_per_layer": [0]}},
            ["drop heads 5:0", "layers 0..1"],
        ),
        (
            {"search": {"drop_heads": ["0:0,0:1,0:2,0:3"], "drop_heads_per_layer": [0]}},
            ["removes all 4 heads of layer 0"],
        ),
        (
            {"search": {"drop_heads_per_layer": [0, 3]}},
            ["drop_heads_per_layer=3", "key-value groups even"],
        ),
        ({"search": {"drop_heads": ["0:0,0:2"]}}, ["drop_heads", "use one"]),
        ({"objectives": {"names": ["seconds"]}}, ["objectives.names", "perplexity"]),
        ({"objectives": {"names": ["perplexity", "flops"]}}, ["objectives.names", "'flops'"]),
        ({"objectives": {"max_ppl_increase": -0.1}}, ["objectives.max_ppl_increase"]),
        ({"early_abort": {"max_ppl_ratio": 0.5}}, ["early_abort.max_ppl_ratio", "> 1"]),
        (
            {"study": {"storage": "sqlite:////no/such/folder/x.db"}},
            ["study.storage", "does not exist"],
        ),
        ({"study": {"storage": "redis://host/1"}}, ["study.storage", "postgresql://"]),
        (
            {"study": {"storage": "journal:////no/such/folder/x.log"}},
            ["study.storage", "does not exist"],
        ),
        ({"study": {"storage": "journal:///"}}, ["study.storage", "journal:///FILE.log"]),
        ({"study": {"heartbeat_seconds": 0}}, ["study.heartbeat_seconds", ">= 1"]),
        ({"model": {"name": "/no/such/model"}}, ["model.name", "does not exist"]),
        ({"model": {"device": "gpu"}}, ["model.device", "cuda"]),
        ({"model": {"max_memory": "lots"}}, ["model.max_memory", "'lots' is not a size", "12GiB"]),
        ({"model": {"max_memory": 0}}, ["model.max_memory", "above 0"]),
    ],
)
def test_bad_study_files_name_the_key(study_file, tables, needles) -> None:
    path = study_file(**tables)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    message = str(info.value)
    for needle in needles:
        assert needle in message, message
    assert list(path.parent.glob("*.db")) == []


def test_password_in_storage_is_refused_and_masked(study_file) -> None:
    url = "postgresql://alice:hunter2@db.example/studies"
    with pytest.raises(ConfigError) as info:
        config.load(study_file(study={"storage": url}))
    assert "hunter2" not in str(info.value)
    assert "alice:***@db.example" in str(info.value)
    assert "PGPASSWORD" in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_storage_folder(study_file, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    with pytest.raises(ConfigError, match="not writable"):
        config.load(study_file(study={"storage": f"sqlite:///{locked}/x.db"}))


def test_unwritable_storage_file(study_file, tmp_path: Path) -> None:
    target = tmp_path / "dir.db"
    target.mkdir()  # a folder where the database file should be: never writable as a file
    with pytest.raises(ConfigError, match="study.storage"):
        config.load(study_file(study={"storage": f"sqlite:///{target}/"}))


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[study\nname = 1\n")
    with pytest.raises(ConfigError, match="broken.toml: not valid TOML"):
        config.load(path)


def test_shipped_study_files_are_valid(tiny_model_dir: Path) -> None:
    studies = Path(__file__).parents[2] / "studies"
    for path in sorted(studies.glob("*.toml")):
        c = config.load(path, check_model=False)
        assert c.study.name == path.stem
