"""The one pipeline: a conversion that fails is one line naming the runtime and the recipe, and
leaves no conversion folder behind."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest

from autoslim.measure import Workload
from autoslim.models import LoadedModel
from autoslim.pipeline import WORKDIR_PREFIX, ConversionError, Pipeline
from autoslim.recipe import Recipe
from autoslim.runtimes import RUNTIMES
from autoslim.testing import tiny_model


def test_an_exporter_error_is_one_line_and_leaves_no_folder(
    tiny_tok: Any, corpus: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = type(RUNTIMES["torch"])

    def exporter_fails(self: Any, source: Any) -> Any:
        raise RuntimeError("Exception from src/core/node.cpp:42:\nshape mismatch\n  at layer 3")

    monkeypatch.setattr(runtime, "convert", exporter_fails)
    pipeline = Pipeline(
        LoadedModel(tiny_model("llama"), tiny_tok, "llama", ""), corpus, Workload()
    )
    before = set(Path(tempfile.gettempdir()).glob(WORKDIR_PREFIX + "*"))
    with pytest.raises(ConversionError) as failed, pipeline.built(Recipe(prune_ratio=0.5)):
        pass
    message = str(failed.value)
    assert "\n" not in message
    assert message == (
        "runtime='torch' could not convert 'prune 50%' (RuntimeError: Exception "
        "from src/core/node.cpp:42:)"
    )
    assert set(Path(tempfile.gettempdir()).glob(WORKDIR_PREFIX + "*")) == before
