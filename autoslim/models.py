"""Loading base models: the bundled reference, a named model, a local Hugging Face folder, a
GGUF file (converted once, :mod:`autoslim.gguf`), or a hub id.

Everything goes through ``AutoModelForCausalLM`` / ``AutoTokenizer``; ``trust_remote_code`` stays
off unless the caller asks for it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from autoslim.errors import ModelError

logger = logging.getLogger(__name__)

REFERENCE = "reference"
REFERENCE_DIR = Path(__file__).parent / "zoo" / "reference"
# Class-name endings of the architectures a saved causal LM declares in its config.
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


@dataclass
class LoadedModel:
    """A base model with its tokenizer and where it came from."""

    model: Any
    tokenizer: Any
    name: str
    path: str

    @property
    def family(self) -> str:
        return str(self.model.config.model_type)


def resolve(name: str) -> str:
    """The folder or hub id behind a model name; ``"reference"`` is the bundled model, a
    name in ``gguf.NAMED`` or a GGUF file is converted once to a cached folder."""
    from autoslim import gguf

    if name in gguf.NAMED:
        return str(gguf.convert(gguf.named_file(name)))
    if name == REFERENCE:
        if not (REFERENCE_DIR / "config.json").is_file():
            raise ModelError(
                f"the bundled reference model is missing from {REFERENCE_DIR}; "
                "reinstall autoslim or run `autoslim zoo train`"
            )
        return str(REFERENCE_DIR)
    path = Path(name).expanduser()
    # Hub ids are "name" or "org/name"; anything else that looks like a path is one.
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        found = gguf.gguf_file(path)
        if found is not None:
            return str(gguf.convert(found))
        if not path.is_dir():
            raise ModelError(
                f"model path {name!r} does not exist or is not a folder; pass a folder holding "
                "config.json and weights, a .gguf file, 'reference', or a hub id"
            )
        if not (path / "config.json").is_file():
            raise ModelError(
                f"model folder {name!r} holds no config.json, so it is not a Hugging Face "
                "model; pass a folder written by save_pretrained"
            )
        return str(path)
    return name


def source(name: str) -> dict[str, Any]:
    """Where model ``name``'s weights came from, for provenance: the folder, and for a GGUF
    conversion the file, its hash and quantization (see :func:`autoslim.gguf.source`)."""
    from autoslim import gguf

    where = resolve(name)
    return {"path": where, **(gguf.source(where) or {"source": "folder or hub"})}


def load_config(name: str, trust_remote_code: bool = False) -> Any:
    """The model's config; a model that ``AutoModelForCausalLM`` cannot load is refused."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    where = resolve(name)
    try:
        config = AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(_load_failure(name, where, e)) from e
    auto_map = getattr(config, "auto_map", None) or {}
    if (
        config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and "AutoModelForCausalLM" not in auto_map
    ):
        raise ModelError(
            f"model {name!r} is a {config.model_type!r} model, not a causal LM; pass a model "
            "that AutoModelForCausalLM loads (GPT-2, OPT, Llama, Qwen, Mistral, ...)"
        )
    saved = list(getattr(config, "architectures", None) or [])
    causal = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type)
    if saved and not any(a == causal or a.endswith(CAUSAL_SUFFIXES) for a in saved):
        raise ModelError(
            f"model {name!r} holds weights for {', '.join(saved)}, not a causal LM head "
            "(AutoModelForCausalLM would add a random one); pass a causal LM such as a "
            "...ForCausalLM or ...LMHeadModel checkpoint"
        )
    return config


# The files a folder's tokenizer vocabulary is read from (fast, sentencepiece, BPE, WordPiece).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


def _load_failure(name: str, where: str, e: Exception) -> str:
    from safetensors import SafetensorError

    first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if isinstance(e, SafetensorError):
        return (
            f"cannot load model folder {name!r}: a weights file is damaged or cut short "
            f"(safetensors: {first_line}); copy or download the model again"
        )
    if Path(where).is_dir():
        return f"cannot load model folder {name!r}: {first_line}"
    return (
        f"cannot load {name!r}: not a local folder, and the hub did not provide it "
        f"({first_line}); pass a local folder, 'reference', or check the network"
    )


def load_model(
    name: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a causal LM and its tokenizer by name, ready for evaluation."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = resolve(name)
    config = load_config(name, trust_remote_code=trust_remote_code)
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(
            where, dtype=dtype, trust_remote_code=trust_remote_code
        )
        tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        raise ModelError(_load_failure(name, where, e)) from e
    folder = Path(where)
    if folder.is_dir() and not any((folder / f).is_file() for f in TOKENIZER_FILES):
        # transformers then makes an empty tokenizer from the config (a vocabulary of 1)
        raise ModelError(
            f"model folder {name!r} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
            "copy the tokenizer files of the model it came from into it"
        )
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    logger.info("loaded %s (%s) from %s", name, config.model_type, where)
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, path=where)


def stored_precision(config: Any) -> str:
    """The precision a model's weights are stored in, from its config (fp32 if unstated)."""
    from autoslim.precisions import precision_of

    return precision_of(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None))


def base_precision(name: str, setting: str, device: str, trust_remote_code: bool = False) -> str:
    """The precision the base model ``name`` is loaded and measured in for ``[model] dtype``
    ``setting`` (see :func:`autoslim.operators.precisions.resolve`)."""
    from autoslim import precisions

    stored = stored_precision(load_config(name, trust_remote_code=trust_remote_code))
    return precisions.resolve(setting, stored, device)
