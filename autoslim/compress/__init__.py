"""Compression operators and their composition, built from one Recipe in the operators'
declared order (``autoslim.operators.OPERATORS``)."""

from __future__ import annotations

from autoslim.compress.backends import save
from autoslim.compress.build import STAGES, BuildResult, build, final_before_distillation, validate
from autoslim.compress.distill import TeacherCache
from autoslim.compress.families import FAMILIES

__all__ = [
    "FAMILIES",
    "STAGES",
    "BuildResult",
    "TeacherCache",
    "build",
    "final_before_distillation",
    "save",
    "validate",
]
