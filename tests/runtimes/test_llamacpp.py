"""The llamacpp runtime: a built model written as GGUF, quantized by llama.cpp, measured by it.

Contract: every family the runtime converts, as built and after a structural recipe, scores in
llama.cpp at F16 the perplexity torch scores, within a relative 1e-3 (llama.cpp keeps its KV
cache in F16: measured 1e-5 to 3e-4); a quantized file saves, reloads and scores the same;
what llama.cpp cannot run is refused with the reason before any work. Tiny models are
initialised with a wide weight range so attention is far from uniform: a wrong q/k layout
moves their logits by 13 (of 11), where the default initialisation hides it.
"""

from __future__ import annotations

import pytest
import torch

from autoslim import data, gguf, precisions
from autoslim.build import build
from autoslim.errors import ConfigError, UnsupportedError
from autoslim.measure.perplexity import perplexity
from autoslim.models import LoadedModel, load_model
from autoslim.protocol import PerplexityProtocol
from autoslim.recipe import Recipe
from autoslim.runtimes import llamacpp
from autoslim.runtimes.base import ConvertInput
from autoslim.runtimes.llamacpp import RUNTIME
from autoslim.testing import tiny_model, tiny_tokenizer

gguf_package = pytest.importorskip("gguf")
pytest.importorskip("llama_cpp", reason=f"llama-cpp-python is not installed: {llamacpp.INSTALL}")

FAMILIES = sorted(llamacpp.ARCHITECTURES)
STRUCTURAL = {
    "gpt2": Recipe(drop_layers=1, prune_ratio=0.5),
    "llama": Recipe(drop_layers=1, drop_heads_per_layer=2, prune_ratio=0.5),
    "mistral": Recipe(drop_layers=1, prune_ratio=0.5),
    "qwen2": Recipe(drop_layers=1, prune_ratio=0.5),
    "qwen3": Recipe(drop_heads_per_layer=2, prune_ratio=0.5),
}
PROTOCOL = PerplexityProtocol(window=64, max_windows=4, batch_size=2)
F16_TOLERANCE = 1e-3


def llamacpp_recipe(**knobs) -> Recipe:
    return Recipe(runtime="llamacpp", **knobs)


def convert(model, tmp_path, tokenizer=None, calibration=None, source=None, **knobs):
    workdir = tmp_path / "convert"
    workdir.mkdir(parents=True)
    return RUNTIME.convert(
        ConvertInput(
            model=model,
            tokenizer=tokenizer or tiny_tokenizer(),
            recipe=llamacpp_recipe(**knobs),
            threads=1,
            workdir=workdir,
            calibration=calibration,
            source=source or {},
        )
    )


@pytest.fixture(scope="module")
def eval_ids(corpus):
    return data.tokens(tiny_tokenizer(), corpus, "eval")


@pytest.mark.parametrize("structural", [False, True], ids=["base", "structural"])
@pytest.mark.parametrize("family", FAMILIES)
def test_f16_scores_the_perplexity_torch_scores(family, structural, tmp_path, corpus, eval_ids):
    model = tiny_model(family, initializer_range=0.2)
    if structural:
        recipe = STRUCTURAL[family]
        RUNTIME.check(recipe.replace(runtime="llamacpp"), model.config, "cpu")
        model = build(
            LoadedModel(model, tiny_tokenizer(), family, ""), recipe, corpus=corpus
        ).model
    expected = perplexity(model, eval_ids, PROTOCOL).perplexity
    with convert(model, tmp_path, gguf_type="F16") as converted:
        assert converted.describe_dtype() == "F16+F32"
        assert converted.parameters() == sum(p.numel() for p in model.parameters())
        got = perplexity(converted, eval_ids, PROTOCOL).perplexity
        assert converted.provenance()["tokenizer_check"]["matches_hf"]
    assert got == pytest.approx(expected, rel=F16_TOLERANCE)


def test_a_quantized_file_saves_reloads_and_scores_the_same(tmp_path, eval_ids):
    model = tiny_model("llama", initializer_range=0.2)
    with convert(model, tmp_path / "f16", gguf_type="F16") as converted:
        f16 = perplexity(converted, eval_ids, PROTOCOL).perplexity
    with convert(model, tmp_path, gguf_type="Q8_0") as converted:
        assert converted.describe_dtype() == "Q8_0+F32"
        scored = perplexity(converted, eval_ids, PROTOCOL).perplexity
        size = converted.size_bytes()
        converted.save(tmp_path / "export")
    assert (tmp_path / "export" / "Modelfile").read_text() == "FROM ./model.gguf\n"
    with RUNTIME.load(tmp_path / "export", threads=1) as reloaded:
        assert reloaded.size_bytes() == size == (tmp_path / "export" / "model.gguf").stat().st_size
        assert reloaded.describe_dtype() == "Q8_0+F32"
        assert perplexity(reloaded, eval_ids, PROTOCOL).perplexity == scored
        assert reloaded.provenance()["gguf_type"] == "Q8_0"
        assert reloaded.tokenizer is not None
    assert scored != f16 and scored == pytest.approx(f16, rel=0.05)


def test_rows_are_scored_independently_and_decode_is_greedy(tmp_path):
    model = tiny_model("llama", initializer_range=0.2)
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (2, 48))
    with convert(model, tmp_path, gguf_type="F32") as converted:
        both = converted.logits(ids)
        assert torch.equal(both[1], converted.logits(ids[1:])[0])
        picked = converted.generate(ids[0, :16].tolist(), 8)
    with torch.no_grad():
        expected = model.generate(ids[:1, :16], max_new_tokens=8, do_sample=False, pad_token_id=0)[
            0, 16:
        ]
    assert picked == expected.tolist()


def test_the_reference_model_keeps_its_perplexity_and_an_importance_matrix_helps(tmp_path, corpus):
    from autoslim.compress.calibration import calibration_batch

    base = load_model("reference")
    ids = data.tokens(base.tokenizer, corpus, "eval")
    calibration = calibration_batch(base.tokenizer, corpus, windows=8, window=128)
    protocol = PerplexityProtocol(window=128, max_windows=4, batch_size=2)
    expected = perplexity(base.model, ids, protocol).perplexity
    scored = {}
    for name, knobs in {
        "F16": {"gguf_type": "F16"},
        "Q4_K_M": {"gguf_type": "Q4_K_M"},
        "Q4_K_M+imatrix": {"gguf_type": "Q4_K_M", "imatrix": True},
    }.items():
        with convert(
            base.model, tmp_path / name, base.tokenizer, calibration, **knobs
        ) as converted:
            scored[name] = perplexity(converted, ids, protocol).perplexity
            assert converted.provenance()["imatrix"] == ("imatrix" in name)
    assert scored["F16"] == pytest.approx(expected, rel=F16_TOLERANCE)
    assert expected < scored["Q4_K_M+imatrix"] < scored["Q4_K_M"]


@pytest.mark.parametrize("family", ["qwen3", "gpt2"])
def test_the_importance_matrix_covers_every_weight_llamacpp_quantizes(family, tmp_path, corpus):
    model = tiny_model(family, tie_word_embeddings=True)
    calibration = data.tokens(tiny_tokenizer(), corpus, "kd")[: 4 * 64].reshape(4, 64)
    matrix = llamacpp.importance_matrix(model, calibration)
    with convert(model, tmp_path, gguf_type="F32") as converted:
        reader = gguf_package.GGUFReader(str(converted.path))
        weights = {t.name: int(t.shape[0]) for t in reader.tensors if len(t.shape) == 2}
    weights.pop("position_embd.weight", None)  # added to the input, never multiplied by it
    assert {name: len(values) for name, values in matrix.items()} == weights
    assert all((values > 0).all() for values in matrix.values())


def test_the_source_gguf_tokenizer_is_copied_and_checked(tmp_path):
    source = tmp_path / "source.gguf"
    llamacpp.write_gguf(tiny_model("llama"), tiny_tokenizer(), source)
    note = {"source": "gguf", "file": source.name, "gguf_path": str(source)}
    note["sha256"] = gguf.sha256(source)
    with convert(tiny_model("llama", seed=1), tmp_path, source=note, gguf_type="F16") as c:
        assert c.provenance()["tokenizer_check"]["matches_hf"]
    other = load_model("reference").tokenizer  # another vocabulary: the check must tell
    check = llamacpp.tokenizer_check(source, other, None)
    assert not check["matches_hf"] and check["first_difference"] is not None


def test_a_gguf_type_llamacpp_lacks_is_refused():
    with pytest.raises(ConfigError, match=r"gguf_type='Q7_0': must be one of 'F32', 'F16'"):
        llamacpp_recipe(gguf_type="Q7_0")


def test_llamacpp_missing_says_what_to_install(monkeypatch):
    monkeypatch.setattr(type(RUNTIME), "modules", ("llama_cpp_not_here", "gguf"))
    with pytest.raises(
        UnsupportedError, match=r"pip install 'autoslim\[llamacpp\]'.*GGML_NATIVE=OFF"
    ):
        RUNTIME.validate(llamacpp_recipe(), tiny_model("llama").config, "cpu")


def test_a_build_for_instructions_this_cpu_lacks_is_refused(monkeypatch):
    monkeypatch.setattr(precisions, "proc_cpu_flags", lambda: frozenset({"sse2"}))
    with pytest.raises(UnsupportedError, match=r"which this CPU lacks.*CMAKE_ARGS="):
        RUNTIME.check(llamacpp_recipe(), tiny_model("llama").config, "cpu")
    info = "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | AVX512_BF16 = 0 | OPENMP = 1 |"
    assert llamacpp.missing_cpu_features(info, frozenset({"avx2"})) == ["AVX512"]


def test_a_faked_cpu_class_does_not_refuse_the_build_this_cpu_runs():
    from autoslim.testing.cpu import fake_cpu

    with fake_cpu("avx2"):  # a study checked for another class; the build runs here
        RUNTIME.check(llamacpp_recipe(), tiny_model("llama").config, "cpu")


def test_what_llamacpp_cannot_run_is_refused_before_any_work():
    config = tiny_model("llama").config
    with pytest.raises(UnsupportedError, match="cannot convert opt models"):
        RUNTIME.validate(llamacpp_recipe(), tiny_model("opt").config, "cpu")
    with pytest.raises(UnsupportedError, match="runs on cpu"):
        RUNTIME.validate(llamacpp_recipe(), config, "cuda")
    with pytest.raises(UnsupportedError, match="query heads dropped"):
        RUNTIME.check(llamacpp_recipe(drop_heads_per_layer=2), tiny_model("qwen2").config, "cpu")
    with pytest.raises(UnsupportedError, match="leave bits at 16"):
        RUNTIME.check(llamacpp_recipe(bits=8), config, "cpu")
    config.rope_parameters = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0}
    with pytest.raises(UnsupportedError, match="rope_type='llama3'"):
        RUNTIME.check(llamacpp_recipe(), config, "cpu")


def test_a_width_the_type_cannot_quantize_falls_back_and_says_so(tmp_path):
    model = tiny_model("llama")  # inputs 128 wide, the MLP's output projection 256
    with convert(model, tmp_path, gguf_type="Q6_K") as converted:
        assert converted.tensor_types().keys() == {"Q8_0", "Q6_K", "F32"}
        assert converted.provenance()["fallback"] == (
            "gguf_type='Q6_K': input widths [128] are not multiples of 256, so llama.cpp "
            "stores those weights in 32-wide types instead (mostly Q8_0; F16 where 32 does "
            "not divide either)"
        )
    assert llamacpp.fallback("Q4_0", model) == ""
    assert llamacpp.fallback("F16", tiny_model("llama", hidden_size=96, head_dim=24)) == ""
    assert "in F16 instead" in llamacpp.fallback(
        "Q4_0", tiny_model("llama", hidden_size=80, head_dim=20)
    )


def test_imatrix_without_calibration_windows_is_refused(tmp_path):
    with pytest.raises(UnsupportedError, match="imatrix=true needs calibration windows"):
        convert(tiny_model("llama"), tmp_path, gguf_type="Q4_0", imatrix=True)


def test_imatrix_knob_is_active_only_where_it_matters():
    imatrix = next(k for k in RUNTIME.knobs if k.name == "imatrix")
    assert imatrix.active({"runtime": "llamacpp", "gguf_type": "Q4_K_M"})
    assert not imatrix.active({"runtime": "llamacpp", "gguf_type": "Q8_0"})
    assert not imatrix.active({"runtime": "torch", "gguf_type": "Q4_K_M"})


def test_the_card_of_a_llamacpp_export_says_how_to_run_it_and_what_the_check_found() -> None:
    from autoslim.outputs.card import ExportFacts, model_card

    recipe = Recipe(runtime="llamacpp", gguf_type="Q4_K_M", imatrix=True)
    provenance = {
        "runtime": {
            "tokenizer_check": {
                "matches_hf": False,
                "sample_tokens": 306,
                "llamacpp_tokens": 305,
                "first_difference": 12,
            },
            "fallback": "Q4_K_M falls back to Q5_0 on 210 of 211 weights (input 576)",
        }
    }
    card = model_card(
        ExportFacts(
            model="smollm2-135m",
            study="s",
            trial=3,
            recipe=recipe,
            reason="--trial 3",
            measurement={"perplexity": 10.3, "energy_source": "rapl", "provenance": provenance},
            verification={
                "perplexity": 10.3,
                "stored_perplexity": 10.3,
                "relative_difference": 0.0,
                "tolerance": 0.01,
            },
            workload="w",
            corpus={"name": "stdlib", "fingerprint": "f"},
            seed=0,
            out="out",
        )
    )
    assert card.data.library_name == "gguf" and "llamacpp" in card.data.tags
    assert "llama-cli -m out/model.gguf" in card.text and "ollama create" in card.text
    assert "first differs at token 12" in card.text
    assert "falls back to Q5_0 on 210 of 211 weights" in card.text
    assert "reloaded with llama-cpp-python's `Llama`" in card.text


@pytest.mark.slow
def test_a_llamacpp_trial_exports_a_gguf_that_llama_cpp_loads(tmp_path, corpus):
    import json

    from llama_cpp import Llama

    from autoslim.outputs.export import MANIFEST, Selection, export
    from autoslim.testing import save_tiny_model
    from autoslim.testing.studies import make_built_study

    model = save_tiny_model("qwen3", tmp_path / "base")
    recipes = (Recipe(), llamacpp_recipe(gguf_type="Q8_0"))
    study = make_built_study(
        f"sqlite:///{tmp_path / 's.db'}", model, corpus, recipes, max_ppl_increase=0.5
    )
    out = tmp_path / "gguf"
    result = export(study, out, Selection(trial=1))
    assert abs(result.relative_difference) < 1e-4
    assert (out / "Modelfile").read_text().startswith("FROM ./model.gguf")
    assert json.loads((out / MANIFEST).read_text())["runtime"]["tensor_types"]
    llm = Llama(str(out / "model.gguf"), n_ctx=64, verbose=False)
    assert llm.n_vocab() == len(tiny_tokenizer())
