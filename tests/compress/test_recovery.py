from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from autoslim import data, models
from autoslim.build import build
from autoslim.compress.backends import save
from autoslim.compress.calibration import calibration_batch
from autoslim.errors import ConfigError, UnsupportedError
from autoslim.models import LoadedModel
from autoslim.recipe import Recipe

from .conftest import PROTOCOL, weights_hash

# (method, family, cut) cases each method heals on a tiny model; bias needs the family's bias
# switch. Layer drops use 4 layers, so the dropped one has a kept layer before it.
CUTS = {
    "prune": {"prune_ratio": 0.5, "prune_importance": "activation"},
    "layers": {"drop_layers": 1},
    "heads": {"drop_heads_per_layer": 2, "prune_importance": "activation"},
}
CASES = [
    ("bias", "llama", "prune"),
    ("bias", "llama", "layers"),
    ("bias", "llama", "heads"),
    ("bias", "qwen3", "heads"),
    ("bias", "gpt2", "prune"),
    ("bias", "opt", "layers"),
    ("block_kd", "llama", "prune"),
    ("block_kd", "mistral", "layers"),
    ("block_kd", "qwen3", "heads"),
    ("block_kd", "gpt2", "prune"),
    ("block_kd", "opt", "layers"),
    ("bias+block_kd", "llama", "layers"),
]


@pytest.fixture(scope="module")
def calibration(tiny_tok: Any, corpus: data.Corpus) -> torch.Tensor:
    return calibration_batch(tiny_tok, corpus, window=64)


def divergence(model: Any, base: Any, ids: torch.Tensor) -> float:
    """Mean KL(base ‖ model) of the next-token distributions over the eval windows: what a
    recovery method heals toward."""
    windows = ids[: len(ids) // PROTOCOL.window * PROTOCOL.window].view(-1, PROTOCOL.window)
    with torch.no_grad():
        want = F.log_softmax(base(input_ids=windows[:8]).logits.float(), dim=-1)
        got = F.log_softmax(model(input_ids=windows[:8]).logits.float(), dim=-1)
    return float(F.kl_div(got, want, log_target=True, reduction="batchmean"))


@pytest.mark.parametrize(("method", "family", "cut"), CASES)
def test_recovery_heals_a_cut_and_reloads(
    method: str,
    family: str,
    cut: str,
    base: Callable[..., LoadedModel],
    corpus: data.Corpus,
    calibration: torch.Tensor,
    eval_ids: torch.Tensor,
    tmp_path: Path,
) -> None:
    depth = {"gpt2": "n_layer"}.get(family, "num_hidden_layers")
    loaded = base(family, **({depth: 4} if cut == "layers" else {}))
    before = weights_hash(loaded.model)
    cut_only = build(loaded, Recipe(**CUTS[cut]), corpus=corpus, calibration=calibration)
    # A random tiny model fits its calibration windows at the default learning rate (the
    # held-out check then keeps the blocks as they were); a pretrained one heals at it.
    healed = build(
        loaded,
        Recipe(**CUTS[cut], recovery=method, recovery_steps=32, recovery_lr=1e-4),
        corpus=corpus,
        calibration=calibration,
    )
    assert weights_hash(loaded.model) == before  # the base is only read
    assert healed.info["recovery"] == method
    unhealed_kl = divergence(cut_only.model, loaded.model, eval_ids)
    healed_kl = divergence(healed.model, loaded.model, eval_ids)
    assert healed_kl < unhealed_kl
    save(healed.model, loaded.tokenizer, tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = eval_ids[:64].unsqueeze(0)
    with torch.no_grad():
        assert torch.allclose(
            reloaded(input_ids=ids).logits, healed.model(input_ids=ids).logits, atol=1e-5
        )


def test_fluctuation_and_bias_restore_constant_channels_exactly(
    base: Callable[..., LoadedModel], corpus: data.Corpus, calibration: torch.Tensor
) -> None:
    """Half of every MLP's channels output a constant (FLAP's premise, made exact): the
    fluctuation score removes exactly those, and their mean, as a bias, gives back the base
    model's function; ranked by mean |activation| they would stay."""
    loaded = base("opt")
    width = loaded.model.config.ffn_dim
    constant = torch.arange(0, width, 2)
    with torch.no_grad():
        for block in loaded.model.model.decoder.layers:
            block.fc1.weight[constant] = 0.0
            block.fc1.bias[constant] = 3.0
    recipe = Recipe(prune_ratio=0.5, prune_importance="fluctuation", recovery="bias")
    healed = build(loaded, recipe, corpus=corpus, calibration=calibration).model
    unhealed = build(loaded, recipe.replace(recovery="none"), corpus=corpus).model
    ids = torch.randint(0, 500, (2, 32))
    with torch.no_grad():
        expected = loaded.model(input_ids=ids).logits
        assert torch.allclose(healed(input_ids=ids).logits, expected, atol=1e-4)
        assert not torch.allclose(unhealed(input_ids=ids).logits, expected, atol=1e-2)


def test_bias_rides_on_the_config_switch_and_the_other_biases_stay_zero(
    base: Callable[..., LoadedModel], corpus: data.Corpus, calibration: torch.Tensor
) -> None:
    loaded = base("llama")
    healed = build(
        loaded,
        Recipe(prune_ratio=0.5, prune_importance="activation", recovery="bias"),
        corpus=corpus,
        calibration=calibration,
    ).model
    assert healed.config.mlp_bias and not loaded.model.config.mlp_bias
    assert not healed.config.attention_bias
    for block in healed.model.layers:
        assert not block.mlp.gate_proj.bias.any() and not block.mlp.up_proj.bias.any()
        assert block.mlp.down_proj.bias.abs().sum() > 0


def test_bad_input_is_refused_before_any_work(
    base: Callable[..., LoadedModel], corpus: data.Corpus, calibration: torch.Tensor
) -> None:
    loaded = base("llama")
    with pytest.raises(ConfigError, match="recovery='bias' heals structural cuts"):
        build(loaded, Recipe(recovery="bias"), corpus=corpus, calibration=calibration)
    with pytest.raises(UnsupportedError, match="cannot heal prune_ratio on mistral.*block_kd"):
        build(
            base("mistral"),
            Recipe(prune_ratio=0.5, recovery="bias"),
            corpus=corpus,
            calibration=calibration,
        )
    with pytest.raises(ConfigError, match="needs at least 1024 calibration tokens.*holds 128"):
        build(
            loaded,
            Recipe(drop_layers=1, recovery="block_kd"),
            corpus=corpus,
            calibration=calibration[:2],
        )


def test_a_diverging_block_is_put_back_never_nan(
    base: Callable[..., LoadedModel], corpus: data.Corpus, calibration: torch.Tensor
) -> None:
    loaded = base("llama")
    recipe = Recipe(drop_layers=1)
    cut = build(loaded, recipe, corpus=corpus, calibration=calibration).model
    healed = build(
        loaded,
        recipe.replace(recovery="block_kd", recovery_lr=1.0, recovery_steps=8),
        corpus=corpus,
        calibration=calibration,
    )
    assert healed.info["recovery_blocks_reverted"] == [0]  # every step made it worse
    assert weights_hash(healed.model) == weights_hash(cut)
    assert all(torch.isfinite(p).all() for p in healed.model.parameters())


@pytest.mark.slow
def test_reference_30_percent_cut_healed_keeps_at_most_half_its_increase(
    reference: models.LoadedModel, corpus: data.Corpus
) -> None:
    from autoslim.measure.perplexity import perplexity
    from autoslim.operators.recovery import DEFAULT_METHOD

    ids = data.tokens(reference.tokenizer, corpus, "eval")
    base_ppl = perplexity(reference.model, ids, PROTOCOL).perplexity
    recipe = Recipe(prune_ratio=0.3, prune_importance="activation")
    cut = perplexity(build(reference, recipe, corpus=corpus).model, ids, PROTOCOL).perplexity
    healing = recipe.replace(recovery=DEFAULT_METHOD, recovery_steps=64)  # 16 a block
    healed_model = build(reference, healing, corpus=corpus).model
    healed = perplexity(healed_model, ids, PROTOCOL).perplexity
    assert healed - base_ppl <= 0.5 * (cut - base_ppl)
