from __future__ import annotations

from autoslim.cli import main


def test_search_check_validates_without_creating_anything(study_file, capsys) -> None:
    path = study_file("checked")
    assert main(["search", str(path), "--check"]) == 0
    assert "valid" in capsys.readouterr().out
    assert not path.with_suffix(".db").exists()


def test_bad_study_file_exits_2_naming_the_key(study_file, capsys) -> None:
    path = study_file(search={"prune_ratio": {"low": 0.4, "high": 0.1}})
    assert main(["search", str(path)]) == 2
    err = capsys.readouterr().err
    assert "search.prune_ratio.high" in err and "swap" in err
    assert not path.with_suffix(".db").exists()


def test_password_is_never_echoed(study_file, capsys) -> None:
    path = study_file(study={"storage": "postgresql://bob:s3cret@127.0.0.1/test"})
    assert main(["search", str(path), "--n-trials", "2"]) == 2
    err = capsys.readouterr().err
    assert "s3cret" not in err and "bob:***@" in err
