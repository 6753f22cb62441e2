"""The contract every runtime keeps, run over each runtime × family it converts × (the base, a
structural cut): converted, it scores the protocol's windows as the torch model it came from
does; it runs the workload; saved and loaded back, it scores and weighs the same. A new runtime
inherits these by its registration in ``autoslim.runtimes.RUNTIMES``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from autoslim.compress.families import FAMILIES
from autoslim.measure import Workload, perplexity
from autoslim.measure.workload import WorkloadRunner
from autoslim.models import LoadedModel
from autoslim.pipeline import Pipeline
from autoslim.protocol import PerplexityProtocol
from autoslim.recipe import Recipe
from autoslim.runtimes import RUNTIMES
from autoslim.testing import tiny_model

PROTOCOL = PerplexityProtocol(window=64, max_windows=4, batch_size=2)
WORKLOAD = Workload(
    prefill_windows=2, decode_tokens=4, decode_prompt_tokens=8, repeats=1, protocol=PROTOCOL
)
# the structural cut is healed by block distillation: what it trains must reach every engine
CUTS = {
    "base": {},
    "structural": {
        "prune_ratio": 0.5,
        "drop_layers": 1,
        "recovery": "block_kd",
        "recovery_steps": 4,
    },
}
# An unquantized conversion computes what torch computes, up to the engine's kernels' rounding.
SAME = 1e-3


def _cells() -> list[Any]:
    cells = []
    for name, runtime in RUNTIMES.items():
        missing = runtime.available()
        for family in sorted(FAMILIES):
            if family in runtime.unsupported_families or "cpu" not in runtime.devices:
                continue
            for cut in CUTS:
                marks = [pytest.mark.skip(reason=missing)] if missing else []
                cells.append(
                    pytest.param(name, family, cut, marks=marks, id=f"{name}-{family}-{cut}")
                )
    return cells


@pytest.fixture
def pipeline(tiny_tok: Any, corpus: Any, request: pytest.FixtureRequest) -> Pipeline:
    family = request.node.callspec.params["family"]
    base = LoadedModel(tiny_model(family), tiny_tok, family, "")
    return Pipeline(base, corpus, WORKLOAD)


@pytest.mark.slow
@pytest.mark.parametrize(("runtime", "family", "cut"), _cells())
def test_runtime_scores_runs_saves_and_reloads_as_torch_does(
    runtime: str, family: str, cut: str, pipeline: Pipeline, tmp_path: Path
) -> None:
    recipe = Recipe(runtime=runtime, **CUTS[cut])
    ids = pipeline.eval_ids()
    with pipeline.built(recipe.replace(runtime="torch")) as in_torch:
        expected = perplexity(in_torch.model, ids, PROTOCOL).perplexity
        parameters = in_torch.model.parameters()
    with pipeline.built(recipe) as built:
        converted = perplexity(built.model, ids, PROTOCOL).perplexity
        assert converted == pytest.approx(expected, rel=SAME)
        assert built.model.parameters() == parameters
        WorkloadRunner(built.model, ids, WORKLOAD).run()
        size = built.model.size_bytes()
        assert size > 0 and built.stage_seconds["convert"] >= 0
        built.model.save(tmp_path / "saved")
    with pipeline.reload(tmp_path / "saved", recipe) as reloaded:
        assert perplexity(reloaded, ids, PROTOCOL).perplexity == pytest.approx(converted, rel=1e-5)
        assert reloaded.size_bytes() == size
        assert reloaded.runtime == runtime


@pytest.mark.slow
@pytest.mark.parametrize("runtime", [name for name in RUNTIMES if name != "torch"])
def test_8_bit_weights_shrink_the_model_and_stay_close(
    runtime: str, tiny_tok: Any, corpus: Any
) -> None:
    missing = RUNTIMES[runtime].available()
    if missing:
        pytest.skip(missing)
    pipeline = Pipeline(LoadedModel(tiny_model("llama"), tiny_tok, "llama", ""), corpus, WORKLOAD)
    ids = pipeline.eval_ids()
    in_runtime = Recipe(runtime=runtime)
    with pipeline.built(in_runtime) as full:
        full_ppl = perplexity(full.model, ids, PROTOCOL).perplexity
        full_size = full.model.size_bytes()
    with pipeline.built(RUNTIMES[runtime].with_weight_bits(in_runtime, 8)) as eight:
        # below 16-bit weights (llama.cpp's unquantized type) and far below fp32 (OpenVINO's)
        assert eight.model.size_bytes() < 0.6 * full_size
        assert perplexity(eight.model, ids, PROTOCOL).perplexity == pytest.approx(
            full_ppl, rel=0.02
        )
