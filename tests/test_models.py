from __future__ import annotations

import json

import pytest

from autoslim import data, models
from autoslim.errors import ModelError
from autoslim.measure.perplexity import perplexity
from autoslim.protocol import PerplexityProtocol
from autoslim.testing import save_tiny_model


def test_reference_loads_offline_and_is_a_good_teacher(corpus):
    loaded = models.load_model("reference")
    assert loaded.family == "qwen3"
    config = loaded.model.config
    assert config.num_key_value_heads < config.num_attention_heads  # GQA
    assert config.head_dim * config.num_attention_heads == config.hidden_size
    card = json.loads((models.REFERENCE_DIR / "training.json").read_text())
    assert card["corpus"]["fingerprint"] == corpus.fingerprint
    ids = data.tokens(loaded.tokenizer, corpus, "eval")
    result = perplexity(loaded.model, ids, PerplexityProtocol())
    # the held-out figure on the model card reproduces from the stored fp16 weights
    assert result.perplexity == pytest.approx(card["eval_perplexity"], rel=1e-3)
    assert result.perplexity <= 55
    assert card["embedding_fraction"] < 0.36
    size = sum(f.stat().st_size for f in models.REFERENCE_DIR.iterdir())
    assert size <= 12 * 2**20


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_local_folders_of_other_families(family, tmp_path, corpus):
    folder = save_tiny_model(family, tmp_path / family)
    loaded = models.load_model(str(folder))
    assert loaded.family == family
    ids = data.tokens(loaded.tokenizer, corpus, "eval")
    ppl = perplexity(loaded.model, ids, PerplexityProtocol(window=64, max_windows=4)).perplexity
    assert 100 < ppl < 5000  # random weights over a 512-token vocabulary


def test_bad_model_names_give_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        models.load_model(str(tmp_path / "nope"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        models.load_model(str(empty))


def test_a_folder_holding_no_causal_lm_is_refused(tmp_path):
    from transformers import ViTConfig

    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(
        tmp_path / "vit"
    )
    with pytest.raises(ModelError, match="not a causal LM"):
        models.load_model(str(tmp_path / "vit"))


def test_a_folder_holding_an_encoder_head_is_refused(tmp_path):
    from transformers import BertConfig

    # BERT is in AutoModelForCausalLM's mapping, but masked-LM weights would get a random head
    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    config.architectures = ["BertForMaskedLM"]
    config.save_pretrained(tmp_path / "bert")
    with pytest.raises(ModelError, match="BertForMaskedLM, not a causal LM head"):
        models.load_config(str(tmp_path / "bert"))
