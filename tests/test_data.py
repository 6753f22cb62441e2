from __future__ import annotations

import pytest

from autoslim import data
from autoslim.errors import ConfigError, DataError


def test_stdlib_split_is_a_pure_function_of_the_path(corpus):
    for split, docs in corpus.splits.items():
        assert docs, f"split {split} is empty"
        for doc in docs:
            assert data.split_of(doc.name) == split
    names = [d.name for docs in corpus.splits.values() for d in docs]
    assert len(names) == len(set(names))
    assert not any("/test/" in f"/{n}" or "/tests/" in f"/{n}" for n in names)
    train_share = len(corpus.splits["train"]) / len(names)
    assert 0.8 < train_share < 0.97


def test_stdlib_corpus_fingerprint_is_stable(corpus, tmp_path):
    again = data.stdlib_corpus.__wrapped__()
    assert again.fingerprint == corpus.fingerprint
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 2\n")
    first = data.stdlib_corpus.__wrapped__(str(tmp_path))
    (tmp_path / "b.py").write_text("y = 3\n")
    second = data.stdlib_corpus.__wrapped__(str(tmp_path))
    assert first.fingerprint != second.fingerprint


def test_text_files_feed_every_split(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("".join(f"line {i} of a long text\n" for i in range(20000)))
    corpus = data.load_corpus(text=[path])
    assert all(corpus.splits[s] for s in data.SPLITS)
    assert corpus.text("eval").count("line") > 100
    assert corpus.name == "files:book.txt"


def test_text_file_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="missing.txt"):
        data.load_corpus(text=[tmp_path / "missing.txt"])
    bad = tmp_path / "binary.txt"
    bad.write_bytes(b"\xff\xfe\x00\x80" * 10)
    with pytest.raises(DataError, match="binary.txt"):
        data.load_corpus(text=[bad])
    with pytest.raises(ConfigError, match="not both"):
        data.load_corpus(text=[bad], dataset="wikitext")


def test_tokens_are_cached_and_separated_by_eos(corpus, tiny_tok):
    ids = data.tokens(tiny_tok, corpus, "eval")
    assert ids is data.tokens(tiny_tok, corpus, "eval")
    assert int((ids == tiny_tok.eos_token_id).sum()) == len(corpus.splits["eval"])


def test_dataset_path_with_a_local_dataset(tmp_path):
    pytest.importorskip("datasets")
    folder = tmp_path / "ds"
    folder.mkdir()
    for split in ("train", "validation", "test"):
        (folder / f"{split}.txt").write_text(f"{split} text\n" * 50)
    corpus = data.dataset_corpus(str(folder))
    assert corpus.name == f"dataset:{folder}"
    assert "test text" in corpus.text("eval")
    assert "validation text" in corpus.text("kd")
    with pytest.raises(DataError, match="cannot load dataset"):
        data.dataset_corpus(str(tmp_path / "nothing-here"))
