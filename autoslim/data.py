"""Text corpora, split deterministically into train / KD / eval, fingerprinted, tokenized.

The default corpus is the Python standard library's own source (outside test folders): every
Python install has it, so it works offline. Each document goes to a split by a hash of its name,
so adding or removing one file never moves another. The fingerprint is a hash of the exact names
and bytes used; compare figures only within one fingerprint (the stdlib differs between Python
versions).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from autoslim.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

SPLITS = ("train", "kd", "eval")
# Percent of documents per split, by hash of the document name.
SPLIT_PERCENT = {"train": 90, "kd": 5, "eval": 5}
STDLIB_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test"})
# User text files are cut into documents of this many lines so that one file feeds all splits.
LINES_PER_DOCUMENT = 100


@dataclass(frozen=True)
class Document:
    name: str
    text: str


@dataclass(frozen=True)
class Corpus:
    """Documents per split plus the fingerprint of every byte used."""

    name: str
    splits: dict[str, tuple[Document, ...]]
    fingerprint: str

    def text(self, split: str) -> str:
        if split not in self.splits:
            raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        return "\n\n".join(doc.text for doc in self.splits[split])

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "documents": {split: len(docs) for split, docs in self.splits.items()},
            "characters": {
                split: sum(len(d.text) for d in docs) for split, docs in self.splits.items()
            },
        }


def split_of(name: str) -> str:
    """The split a document belongs to: a pure function of its name."""
    bucket = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % 100
    if bucket < SPLIT_PERCENT["train"]:
        return "train"
    if bucket < SPLIT_PERCENT["train"] + SPLIT_PERCENT["kd"]:
        return "kd"
    return "eval"


def _fingerprint(entries: Sequence[tuple[str, bytes]]) -> str:
    digest = hashlib.sha256()
    for name, data in sorted(entries):
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest()[:16]


def _build(name: str, documents: Sequence[Document], raw: Sequence[tuple[str, bytes]]) -> Corpus:
    splits: dict[str, list[Document]] = {split: [] for split in SPLITS}
    for doc in sorted(documents, key=lambda d: d.name):
        splits[split_of(doc.name)].append(doc)
    return Corpus(
        name=name,
        splits={split: tuple(docs) for split, docs in splits.items()},
        fingerprint=_fingerprint(raw),
    )


@functools.lru_cache(maxsize=2)
def stdlib_corpus(root: str | None = None) -> Corpus:
    """The standard library's ``.py`` files outside test folders, split by relative path."""
    base = Path(root or sysconfig.get_paths()["stdlib"])
    documents: list[Document] = []
    raw: list[tuple[str, bytes]] = []
    for path in sorted(base.rglob("*.py")):
        rel = path.relative_to(base)
        if STDLIB_EXCLUDED_DIRS.intersection(rel.parts[:-1]):
            continue
        data = path.read_bytes()
        rel_name = rel.as_posix()
        raw.append((rel_name, data))
        documents.append(Document(rel_name, data.decode("utf-8", errors="replace")))
    if not documents:
        raise DataError(f"no Python source found under {base}; pass --text FILE... instead")
    return _build("stdlib", documents, raw)


def text_corpus(paths: Sequence[str | Path]) -> Corpus:
    """User text files, cut into documents of ``LINES_PER_DOCUMENT`` lines split by hash."""
    documents: list[Document] = []
    raw: list[tuple[str, bytes]] = []
    for given in paths:
        path = Path(given)
        if not path.is_file():
            raise DataError(f"text file {str(given)!r} does not exist or is not a file")
        try:
            data = path.read_bytes()
            text = data.decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(
                f"cannot read text file {str(given)!r} ({type(e).__name__}: {e}); "
                "pass readable UTF-8 text files"
            ) from e
        raw.append((path.name, data))
        lines = text.splitlines(keepends=True)
        for start in range(0, len(lines), LINES_PER_DOCUMENT):
            chunk = "".join(lines[start : start + LINES_PER_DOCUMENT])
            documents.append(Document(f"{path.name}#{start // LINES_PER_DOCUMENT:06d}", chunk))
    if not documents:
        raise DataError("the text files given are empty; pass files that hold text")
    return _build("files:" + ",".join(Path(p).name for p in paths), documents, raw)


def dataset_corpus(spec: str) -> Corpus:
    """A Hugging Face dataset named ``path[:config]``; its train / validation / test splits
    become train / kd / eval. Needs the ``datasets`` package (and a hub, or a local path)."""
    try:
        import datasets
    except ImportError as e:
        raise DataError(
            f"--dataset {spec!r} needs the 'datasets' package: pip install 'autoslim[datasets]'"
        ) from e
    path, _, config = spec.partition(":")
    try:
        loaded = datasets.load_dataset(path, config or None)
    except Exception as e:
        raise DataError(f"cannot load dataset {spec!r}: {type(e).__name__}: {e}") from e
    mapping = {"train": "train", "kd": "validation", "eval": "test"}
    missing = [hf for hf in mapping.values() if hf not in loaded]
    if missing:
        raise DataError(
            f"dataset {spec!r} lacks split(s) {', '.join(missing)}; "
            f"it has {', '.join(loaded)}: autoslim needs train, validation and test"
        )
    splits: dict[str, tuple[Document, ...]] = {}
    raw: list[tuple[str, bytes]] = []
    for ours, theirs in mapping.items():
        column = (
            "text" if "text" in loaded[theirs].column_names else loaded[theirs].column_names[0]
        )
        text = "\n".join(str(t) for t in loaded[theirs][column])
        splits[ours] = (Document(f"{theirs}", text),)
        raw.append((theirs, text.encode()))
    return Corpus(name=f"dataset:{spec}", splits=splits, fingerprint=_fingerprint(raw))


def load_corpus(text: Sequence[str | Path] | None = None, dataset: str | None = None) -> Corpus:
    """The corpus a command asked for: ``--text FILE...``, ``--dataset NAME`` or the stdlib."""
    if text and dataset:
        raise ConfigError("give either --text or --dataset, not both")
    if text:
        return text_corpus(text)
    if dataset:
        return dataset_corpus(dataset)
    return stdlib_corpus()


def _tokenizer_key(tokenizer: Any) -> str:
    vocab = tokenizer.get_vocab()
    digest = hashlib.sha256(repr(sorted(vocab.items())).encode()).hexdigest()[:16]
    return f"{type(tokenizer).__name__}:{digest}"


_TOKEN_CACHE: dict[tuple[str, str, str], torch.Tensor] = {}


def tokens(tokenizer: Any, corpus: Corpus, split: str) -> torch.Tensor:
    """One 1-D LongTensor: the split's documents tokenized, separated by the EOS token."""
    key = (_tokenizer_key(tokenizer), corpus.fingerprint, split)
    if key not in _TOKEN_CACHE:
        docs = corpus.splits[split]
        if not docs:
            raise DataError(
                f"the {split!r} split of corpus {corpus.name!r} is empty; give more text"
            )
        eos = tokenizer.eos_token_id
        ids: list[int] = []
        encoded = tokenizer([d.text for d in docs], add_special_tokens=False, verbose=False)[
            "input_ids"
        ]
        for doc_ids in encoded:
            ids.extend(doc_ids)
            if eos is not None:
                ids.append(eos)
        _TOKEN_CACHE[key] = torch.tensor(ids, dtype=torch.long)
    return _TOKEN_CACHE[key]
