from __future__ import annotations

import json

from autoslim import data, models
from autoslim.cli import main
from autoslim.measure.perplexity import perplexity
from autoslim.protocol import PerplexityProtocol


def test_miniature_training_beats_the_untrained_model_and_reloads(tmp_path, capsys, corpus):
    out = tmp_path / "mini"
    assert main(["zoo", "train", "--miniature", "--out", str(out), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["eval_perplexity"] < 0.5 * facts["untrained_eval_perplexity"]
    assert (out / "model.safetensors").is_file()
    assert "held-out perplexity" in (out / "README.md").read_text()
    loaded = models.load_model(str(out))
    ids = data.tokens(loaded.tokenizer, corpus, "eval")
    again = perplexity(loaded.model, ids, PerplexityProtocol(window=64))
    # fp16 storage barely moves the figure recorded at the end of training
    assert abs(again.perplexity - facts["eval_perplexity"]) / facts["eval_perplexity"] < 0.02


def test_training_is_deterministic(tmp_path, capsys):
    for name in ("a", "b"):
        main(["zoo", "train", "--miniature", "--steps", "3", "--out", str(tmp_path / name)])
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (
        tmp_path / "b" / "model.safetensors"
    ).read_bytes()


def test_refuses_a_non_empty_output_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("keep me")
    assert main(["zoo", "train", "--miniature", "--out", str(tmp_path / "x")]) == 2
    assert (tmp_path / "x" / "f").read_text() == "keep me"
