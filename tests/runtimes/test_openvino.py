"""The openvino runtime end to end: a study trial in OpenVINO exports a folder that
optimum-intel and OpenVINO GenAI load, re-measured after reload; its own knobs and bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from autoslim.errors import ConfigError, UnsupportedError
from autoslim.outputs.export import MANIFEST, Selection, export
from autoslim.recipe import Recipe
from autoslim.runtimes import RUNTIMES
from autoslim.testing import save_tiny_model
from autoslim.testing.studies import make_built_study

pytestmark = pytest.mark.skipif(
    RUNTIMES["openvino"].available() is not None,
    reason=str(RUNTIMES["openvino"].available()),
)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, corpus: Any) -> Any:
    root = tmp_path_factory.mktemp("openvino")
    model = save_tiny_model("qwen3", root / "base")
    return make_built_study(
        f"sqlite:///{root / 'study.db'}",
        model,
        corpus,
        (Recipe(), Recipe(runtime="openvino", bits=8)),
        max_ppl_increase=0.5,
    )


@pytest.mark.slow
def test_an_openvino_trial_exports_a_folder_its_engines_load(study: Any, tmp_path: Path) -> None:
    import openvino_genai
    from optimum.intel import OVModelForCausalLM

    out = tmp_path / "ov"
    result = export(study, out, Selection(trial=1))
    assert abs(result.relative_difference) < 1e-4
    assert (out / "openvino_model.xml").is_file() and (out / "openvino_tokenizer.xml").is_file()
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["recipe"]["runtime"] == "openvino"
    assert manifest["runtime"]["versions"]["openvino"] != "absent"
    assert "openvino_model.bin" in manifest["files"]
    card = (out / "README.md").read_text()
    assert "OVModelForCausalLM.from_pretrained" in card and "library_name: openvino" in card
    model = OVModelForCausalLM.from_pretrained(out)
    prompt = torch.tensor([[1, 2, 3, 4]])
    generated = model.generate(prompt, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert generated.shape == (1, 6)
    pipe = openvino_genai.LLMPipeline(str(out), "CPU")
    assert isinstance(pipe.generate("def f(", max_new_tokens=3), str)


def test_openvino_knobs_are_sampled_only_under_openvino_at_4_bits() -> None:
    assert "ov_group_size" not in Recipe(runtime="openvino", bits=8).active_params()
    assert "ov_group_size" in Recipe(runtime="openvino", bits=4).active_params()
    torch_int4 = Recipe(bits=4).active_params()
    assert "ov_group_size" not in torch_int4 and "quant_backend" in torch_int4
    assert "quant_backend" not in Recipe(runtime="openvino", bits=4).active_params()


def test_a_group_size_that_does_not_divide_a_layer_is_refused_before_work() -> None:
    from autoslim.build import validate
    from autoslim.testing import tiny_model

    config = tiny_model("llama").config  # hidden 128, MLP 256
    validate(Recipe(runtime="openvino", bits=4, ov_group_size=128), config)
    cut = Recipe(runtime="openvino", bits=4, ov_group_size=128, prune_ratio=0.25)  # MLP 192
    divide = "ov_group_size=128 does not divide the 192"
    with pytest.raises(UnsupportedError, match=divide) as refused:
        validate(cut, config)
    assert "choose a group size that divides it, or -1" in str(refused.value)


def test_a_study_file_naming_a_runtime_that_is_not_installed_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from autoslim.search import config

    file = tmp_path / "s.toml"
    file.write_text('[study]\nn_trials = 2\n[search]\nruntime = ["torch", "openvino"]\n')
    monkeypatch.setattr(type(RUNTIMES["openvino"]), "modules", ("no_such_openvino",))
    with pytest.raises(ConfigError) as refused:
        config.load(file)
    message = str(refused.value)
    assert "search.runtime: 'openvino': no_such_openvino is not installed" in message
    assert "pip install 'autoslim[openvino]'" in message and "\n" not in message


def test_a_runtime_knob_under_another_runtime_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from autoslim.cli import main
    from autoslim.search import config

    file = tmp_path / "s.toml"
    file.write_text('[study]\nn_trials = 2\n[search]\nruntime = ["torch"]\nov_group_size = [32]\n')
    with pytest.raises(ConfigError, match="search.ov_group_size: no recipe of this space uses it"):
        config.load(file, check_model=False)
    assert main(["measure", "--bits", "4", "--ov-group-size", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("drop it, or give the flags it needs") and "\n" not in err
    assert "--ov-group-size 32: this recipe does not use it" in err
