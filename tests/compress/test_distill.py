from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from autoslim import data
from autoslim.compress.distill import TEMPERATURES, TeacherBatch, TeacherCache, distill, kd_loss
from autoslim.testing import textbook_kd_loss


@pytest.fixture
def kd_ids(tiny_tok: Any, corpus: data.Corpus) -> torch.Tensor:
    return data.tokens(tiny_tok, corpus, "kd")


def test_top_k_over_the_whole_vocabulary_is_exact_kd(
    base: Callable[..., Any], kd_ids: torch.Tensor
) -> None:
    teacher = base("qwen3").model
    student = base("qwen3", seed=1).model
    vocab = teacher.config.vocab_size
    exact = TeacherCache(teacher, kd_ids, window=64, batch_size=2, top_k=None, reuse=False)
    top = TeacherCache(teacher, kd_ids, window=64, batch_size=2, top_k=vocab)
    with torch.no_grad():
        logits = student(input_ids=exact.batch(0).inputs).logits
    full = kd_loss(logits, exact.batch(0), temperature=2.0, alpha=0.7)
    sparse = kd_loss(logits, top.batch(0), temperature=2.0, alpha=0.7)
    for a, b in zip(full, sparse, strict=True):
        assert float(a) == pytest.approx(float(b), rel=1e-3)
    # Fewer tokens: the rest of the vocabulary is one bucket, a coarser view of the same two
    # distributions, so the KL can only shrink (and is exact at any cached temperature).
    approx = TeacherCache(teacher, kd_ids, window=64, batch_size=2, top_k=64)
    for temperature in (1.0, 2.5):
        exact_kl = float(kd_loss(logits, exact.batch(0), temperature, 1.0)[1])
        top_kl = float(kd_loss(logits, approx.batch(0), temperature, 1.0)[1])
        assert 0 < top_kl <= exact_kl * 1.001


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_loss_and_gradient_equal_the_textbook_formula(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    batch, length, vocab = 3, 300, 97  # 900 rows: several chunks, the last one partial
    student = torch.randn(batch, length, vocab) * 3
    teacher = student + torch.randn(batch, length, vocab)
    inputs = torch.randint(0, vocab, (batch, length))
    results = []
    for loss_fn in (
        lambda z: textbook_kd_loss(z, teacher, inputs, 2.5, 0.3),
        lambda z: kd_loss(z, TeacherBatch(inputs, teacher), 2.5, 0.3),
    ):
        logits = student.clone().to(dtype).requires_grad_()
        losses = loss_fn(logits)
        losses[0].backward()
        assert logits.grad is not None and logits.grad.dtype == dtype
        results.append(([float(x.detach()) for x in losses], logits.grad.float()))
    (expected, expected_grad), (got, got_grad) = results
    assert got == pytest.approx(expected, rel=1e-5)
    tolerance = 1e-6 if dtype == torch.float32 else 1e-2  # bf16: the gradient's own rounding
    torch.testing.assert_close(got_grad, expected_grad, rtol=tolerance, atol=tolerance * 1e-3)


def test_fused_top_k_gradient_is_the_derivative_of_the_loss() -> None:
    torch.manual_seed(0)
    vocab, top_k = 16, 4
    teacher = torch.randn(2, 5, vocab, dtype=torch.float64) * 2
    values, indices = teacher.topk(top_k, dim=-1)
    normalizers = torch.stack([teacher.div(t).logsumexp(-1) for t in TEMPERATURES], -1)
    batch = TeacherBatch(torch.randint(0, vocab, (2, 5)), values, indices, normalizers)
    logits = torch.randn(2, 5, vocab, dtype=torch.float64, requires_grad=True)
    for temperature, alpha in ((1.0, 0.5), (3.0, 0.9), (0.7, 1.0)):
        assert torch.autograd.gradcheck(
            lambda z, t=temperature, a=alpha: kd_loss(z, batch, t, a)[0], (logits,)
        )


def test_teacher_runs_once_per_window_and_is_reused(
    base: Callable[..., Any], kd_ids: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = TeacherCache(base("qwen3").model, kd_ids, window=32, batch_size=4)
    calls: list[list[int]] = []
    run = cache._run_teacher
    monkeypatch.setattr(cache, "_run_teacher", lambda rows: calls.append(rows) or run(rows))
    first = cache.batch(0)
    again = cache.batch(0)
    cache.batch(1)
    assert calls == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert torch.equal(first.values, again.values)
    assert first.values.shape == (4, 32, 64)
    assert first.indices is not None and first.indices.dtype == torch.int32


@pytest.mark.parametrize(
    ("optimizer", "checkpointing"), [("adamw", False), ("adamw8bit", False), ("adamw", True)]
)
def test_distillation_moves_the_student_towards_the_teacher(
    base: Callable[..., Any], kd_ids: torch.Tensor, optimizer: str, checkpointing: bool
) -> None:
    # plain AdamW, and each memory saver (bitsandbytes 8-bit AdamW, gradient checkpointing)
    teacher = base("qwen3").model
    student = base("qwen3", seed=1).model
    cache = TeacherCache(teacher, kd_ids, window=64, batch_size=4)
    batch = cache.batch(0)
    with torch.no_grad():
        before = float(kd_loss(student(input_ids=batch.inputs).logits, batch, 1.0, 1.0)[1])
    info = distill(
        student,
        cache,
        steps=6,
        temperature=1.0,
        alpha=1.0,
        lr=3e-3,
        optimizer=optimizer,
        checkpointing=checkpointing,
    )
    with torch.no_grad():
        after = float(kd_loss(student(input_ids=batch.inputs).logits, batch, 1.0, 1.0)[1])
    assert after < before
    assert info["kd_steps"] == 6
    assert (info["kd_optimizer"], info["kd_checkpointing"]) == (optimizer, checkpointing)
    assert not student.training
    assert not student.is_gradient_checkpointing  # switched off for the measurement
