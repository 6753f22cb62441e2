"""Task evaluations on a model in memory: a user function's result, and each way it can fail
(the trial then FAILs with the reason)."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoslim.tasks.run import TaskEvaluator, TaskFailed
from autoslim.tasks.spec import TaskSpec


@pytest.fixture(scope="module")
def model():
    from autoslim.testing import tiny_model

    return tiny_model("qwen3")


def _evaluator(tmp_path: Path, code: str, metric: str = "") -> TaskEvaluator:
    (tmp_path / "user.py").write_text(code)
    spec = TaskSpec("mine", function=f"{tmp_path / 'user.py'}:score", metric=metric)
    return TaskEvaluator({"mine": spec}, "cpu")


def test_a_user_function_scores_the_model_it_is_given(tmp_path: Path, model, tiny_tok) -> None:
    code = (
        "def score(model, tokenizer):\n"
        "    return {'params': float(sum(p.numel() for p in model.parameters())), 'x': 1}\n"
    )
    result = _evaluator(tmp_path, code, metric="params").evaluate(model, tiny_tok)["mine"]
    assert result.value == sum(p.numel() for p in model.parameters())
    assert (result.metric, result.stderr, result.version) == ("params", None, "user function")


@pytest.mark.parametrize(
    ("code", "needle"),
    [
        ("import no_such_module\ndef score(m, t):\n    return {}\n", "cannot import"),
        ("def score(m, t):\n    return {'f1': float('nan')}\n", "f1=nan is not finite"),
        ("def score(m, t):\n    return 0.5\n", "returned float, not a non-empty dict"),
        ("def score(m, t):\n    return {'a': 1, 'b': 2}\n", "set tasks.mine.metric"),
        ("def score(m, t):\n    return {'f1': 'high'}\n", "f1='high' is not a number"),
    ],
)
def test_a_user_function_that_fails_says_why(tmp_path: Path, model, tiny_tok, code, needle):
    with pytest.raises(TaskFailed, match="task mine") as e:
        _evaluator(tmp_path, code).evaluate(model, tiny_tok)
    assert needle in str(e.value)
