"""Helpers shared by tests, notebooks and benchmarks: tiny random models of each family."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from autoslim import data

TINY_VOCAB = 512

# Tiny configs per family: 2 layers, hidden 128, 4 query heads in 2 key-value groups where
# the family has GQA. Shapes are multiples of 64 so 4-bit kernels accept them.
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "gpt2": {"n_embd": 128, "n_layer": 2, "n_head": 4, "n_positions": 128},
    "opt": {
        "hidden_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "ffn_dim": 256,
        "word_embed_proj_dim": 128,
        "max_position_embeddings": 128,
    },
    "llama": {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "max_position_embeddings": 128,
    },
}
for _family in ("qwen2", "qwen3", "mistral"):
    TINY_CONFIGS[_family] = dict(TINY_CONFIGS["llama"])


@functools.lru_cache(maxsize=1)
def tiny_tokenizer() -> Any:
    """A byte-level BPE tokenizer of 512 tokens trained on the stdlib corpus's KD split."""
    from autoslim.zoo.train import train_tokenizer

    corpus = data.stdlib_corpus()
    kd_only = data.Corpus(
        name="stdlib-kd", splits={"train": corpus.splits["kd"]}, fingerprint=corpus.fingerprint
    )
    return train_tokenizer(kd_only, TINY_VOCAB)


def tiny_model(family: str, seed: int = 0, **overrides: Any) -> Any:
    """A randomly initialised causal LM of ``family`` built from config (no download)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = tiny_tokenizer()
    kwargs = {**TINY_CONFIGS[family], **overrides}
    config = AutoConfig.for_model(
        family,
        vocab_size=len(tok),
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
        **kwargs,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.eval()
    return model


def save_tiny_model(family: str, folder: str | Path, seed: int = 0, **overrides: Any) -> Path:
    """Write a tiny random ``family`` model and its tokenizer as a Hugging Face folder."""
    out = Path(folder)
    tiny_model(family, seed=seed, **overrides).save_pretrained(out)
    tiny_tokenizer().save_pretrained(out)
    return out


def textbook_kd_loss(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    inputs: torch.Tensor,
    temperature: float,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, KL × T², CE) written the plain autograd way over the whole vocabulary: what
    ``compress.distill.kd_loss`` must equal, and the KD step it speeds up."""
    import torch.nn.functional as F

    vocab = logits.shape[-1]
    ce = F.cross_entropy(logits[:, :-1].float().reshape(-1, vocab), inputs[:, 1:].reshape(-1))
    student = F.log_softmax(logits.float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = (teacher.exp() * (teacher - student)).sum(-1).mean() * temperature**2
    return alpha * kl + (1 - alpha) * ce, kl, ce
