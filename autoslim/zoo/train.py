"""Train the bundled reference model: a byte-level BPE tokenizer and a small Qwen3 causal LM.

Fixed seed and step count (never wall time), so every machine trains the same model. The
output folder is a plain Hugging Face checkpoint (fp16 safetensors, config, tokenizer) plus a
model card and the training curve.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from autoslim import data
from autoslim.measure.perplexity import perplexity
from autoslim.protocol import PerplexityProtocol

logger = logging.getLogger(__name__)

EOS = "<|endoftext|>"


@dataclass(frozen=True)
class ZooConfig:
    """Architecture and training schedule of a zoo model. The defaults are the reference."""

    vocab_size: int = 4096
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 8
    num_kv_heads: int = 2
    head_dim: int = 32
    intermediate_size: int = 768
    context: int = 256
    batch_size: int = 16
    steps: int = 2400
    lr: float = 2e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    seed: int = 0
    eval_every: int = 250
    eval_windows: int = 64

    @classmethod
    def miniature(cls) -> ZooConfig:
        """A seconds-long configuration for tests: same code path, tiny shapes."""
        return cls(
            vocab_size=512,
            hidden_size=64,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            head_dim=16,
            intermediate_size=128,
            context=64,
            batch_size=8,
            steps=30,
            lr=3e-3,
            warmup_steps=5,
            eval_every=15,
            eval_windows=8,
        )


def train_tokenizer(corpus: data.Corpus, vocab_size: int) -> Any:
    """A byte-level BPE tokenizer trained on the corpus's train split."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((d.text for d in corpus.splits["train"]), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS, unk_token=None
    )


def build_model(config: ZooConfig, tokenizer: Any) -> Any:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    # As a dict: transformers 5.5's stubs declare none of a config's fields as arguments.
    fields: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.context,
        "tie_word_embeddings": True,
        "bos_token_id": tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.eos_token_id,
    }
    model_config = Qwen3Config(**fields)
    return Qwen3ForCausalLM(model_config)


def _lr_at(step: int, config: ZooConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * progress))


def _optimizer(model: torch.nn.Module, config: ZooConfig) -> torch.optim.Optimizer:
    """AdamW, weight decay on the matrices only (not on norms and biases)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
        betas=(0.9, 0.95),
    )


def train(
    config: ZooConfig,
    out_dir: str | Path,
    corpus: data.Corpus | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train tokenizer and model, save them to ``out_dir``, return the model card's facts."""
    corpus = corpus or data.stdlib_corpus()
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    tokenizer = train_tokenizer(corpus, config.vocab_size)
    train_ids = data.tokens(tokenizer, corpus, "train")
    eval_ids = data.tokens(tokenizer, corpus, "eval")
    model = build_model(config, tokenizer)
    protocol = PerplexityProtocol(
        window=config.context, stride=config.context, max_windows=config.eval_windows
    )
    optimizer = _optimizer(model, config)
    generator = torch.Generator().manual_seed(config.seed)
    span = config.context
    untrained = perplexity(model, eval_ids, protocol).perplexity
    curve: list[dict[str, Any]] = [{"step": 0, "eval_perplexity": untrained}]
    model.train()
    for step in range(config.steps):
        starts = torch.randint(0, len(train_ids) - span, (config.batch_size,), generator=generator)
        batch = torch.stack([train_ids[s : s + span] for s in starts.tolist()])
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, config)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            ppl = perplexity(model, eval_ids, protocol).perplexity
            model.train()
            point = {
                "step": step + 1,
                "train_loss": round(loss.item(), 4),
                "eval_perplexity": round(ppl, 3),
                "seconds": round(time.perf_counter() - started, 1),
            }
            curve.append(point)
            logger.info("step %d: %s", step + 1, point)
            if progress:
                progress(point)
    seconds = time.perf_counter() - started
    model.eval()
    final = perplexity(model, eval_ids, PerplexityProtocol(window=config.context))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.to(torch.float16).save_pretrained(out)
    tokenizer.model_max_length = config.context
    tokenizer.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    n_embed = model.get_input_embeddings().weight.numel()
    facts: dict[str, Any] = {
        "architecture": "Qwen3ForCausalLM",
        "config": asdict(config),
        "parameters": n_params,
        "embedding_parameters": n_embed,
        "embedding_fraction": round(n_embed / n_params, 3),
        "tokens_seen": config.steps * config.batch_size * config.context,
        "corpus": corpus.describe(),
        "train_tokens": len(train_ids),
        "eval_tokens": len(eval_ids),
        "untrained_eval_perplexity": untrained,
        "eval_perplexity": final.perplexity,
        "eval_protocol": final.protocol.describe(),
        "eval_scored_tokens": final.scored_tokens,
        "training_seconds": round(seconds, 1),
        "machine": f"{platform.machine()} {platform.processor()} torch {torch.__version__}",
        "curve": curve,
    }
    (out / "training.json").write_text(json.dumps(facts, indent=2) + "\n")
    (out / "README.md").write_text(model_card(facts))
    return facts


def model_card(facts: dict[str, Any]) -> str:
    c = facts["config"]
    rows = "\n".join(
        f"| {p['step']} | {p.get('train_loss', '')} | {p['eval_perplexity']:.2f} |"
        for p in facts["curve"]
    )
    return f"""# autoslim reference model

A small causal LM that autoslim trains itself (`autoslim zoo train`), so every machine has the
same model to compress with no network. It is the embedded default: pass `--model reference`.

| fact | value |
|---|---|
| architecture | {facts["architecture"]}: {c["num_layers"]} layers, hidden {c["hidden_size"]}, \
{c["num_heads"]} query / {c["num_kv_heads"]} key-value heads of size {c["head_dim"]}, \
MLP {c["intermediate_size"]}, context {c["context"]}, tied embeddings |
| tokenizer | byte-level BPE, vocabulary {c["vocab_size"]}, trained on the train split |
| parameters | {facts["parameters"]:,} (embedding {facts["embedding_fraction"]:.0%}) |
| training | {c["steps"]} steps × batch {c["batch_size"]} × {c["context"]} tokens, \
AdamW lr {c["lr"]} cosine to {c["min_lr"]}, bf16 autocast, seed {c["seed"]} |
| tokens seen | {facts["tokens_seen"]:,} |
| corpus | {facts["corpus"]["name"]}, fingerprint `{facts["corpus"]["fingerprint"]}` |
| held-out perplexity | {facts["eval_perplexity"]:.2f} over \
{facts["eval_scored_tokens"]:,} tokens ({facts["eval_protocol"]}) |
| untrained perplexity | {facts["untrained_eval_perplexity"]:.0f} |
| training time | {facts["training_seconds"]:.0f} s on {facts["machine"]} |

Weights are stored as fp16 safetensors. Perplexities are comparable only within one corpus
fingerprint (the standard library differs between Python versions).

## Training curve

| step | train loss | eval perplexity |
|---|---|---|
{rows}
"""
