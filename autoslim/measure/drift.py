"""Drift from the teacher: how much a compressed model's predictions moved, not only its loss.

On exactly the targets the perplexity protocol scores, ``top1_agreement`` is the fraction of
positions where student and teacher predict the same next token (argmax), and ``teacher_kl`` is
the mean KL(teacher || student) of their next-token distributions, in nats per token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from autoslim.errors import ModelError
from autoslim.measure.perplexity import as_runtime_model, window_batches
from autoslim.protocol import PerplexityProtocol


@dataclass(frozen=True)
class Drift:
    top1_agreement: float
    teacher_kl: float
    positions: int


@torch.no_grad()
def drift(
    student: Any, teacher: Any, ids: torch.Tensor, protocol: PerplexityProtocol | None = None
) -> Drift:
    """Top-1 agreement and mean KL of ``student`` against ``teacher`` on ``ids`` (each a torch
    model or a model converted into any runtime)."""
    protocol = protocol or PerplexityProtocol()
    agree = 0
    kl_sum = 0.0
    positions = 0
    student, teacher = as_runtime_model(student), as_runtime_model(teacher)
    for inputs, mask in window_batches(ids, protocol):
        s_logits = student.logits(inputs)
        t_logits = teacher.logits(inputs)
        if s_logits.shape[-1] != t_logits.shape[-1]:
            raise ModelError(
                f"teacher vocabulary of {t_logits.shape[-1]} differs from the model's "
                f"{s_logits.shape[-1]}; drift needs the same tokenizer: pass the uncompressed "
                "base model as teacher"
            )
        selected = mask.to(s_logits.device)
        s_log = F.log_softmax(s_logits[:, :-1][selected].float(), dim=-1)
        t_log = F.log_softmax(t_logits[:, :-1].to(s_logits.device)[selected].float(), dim=-1)
        agree += int((s_log.argmax(-1) == t_log.argmax(-1)).sum())
        kl_sum += float((t_log.exp() * (t_log - s_log)).sum())
        positions += int(selected.sum())
    return Drift(
        top1_agreement=agree / positions, teacher_kl=kl_sum / positions, positions=positions
    )
