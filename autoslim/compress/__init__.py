"""Compression operators and their composition: structured_prune → drop_heads → distill →
quantize, built from one Recipe."""

from __future__ import annotations

from autoslim.compress.backends import save
from autoslim.compress.build import STAGES, BuildResult, build, validate
from autoslim.compress.distill import TeacherCache
from autoslim.compress.families import FAMILIES, OPERATORS

__all__ = [
    "FAMILIES",
    "OPERATORS",
    "STAGES",
    "BuildResult",
    "TeacherCache",
    "build",
    "save",
    "validate",
]
