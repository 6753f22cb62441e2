"""The compression operators, each declared once: its knobs, its checks, its support, its apply.

Every table and check that names a knob derives from :data:`OPERATORS` (with the runtimes'
knobs, :data:`autoslim.recipe.KNOBS`): the :class:`Recipe` fields and their validation, the
search space (``space.py``), study-file parsing (``config.py``), ``autoslim measure``'s recipe
flags, the order ``build.build`` applies them in, and README's knob table and support
matrix (``python -m autoslim.recipe README.md``).

This package never imports torch at import time: an operator's ``validate`` and ``apply``
import their implementation (``autoslim/compress/``) when called, so the CLI's ``--help`` and
study-file checks stay light. A new operator is one module here (its :class:`Operator`, from
``base.py``) and one entry in :data:`OPERATORS`.
"""

from __future__ import annotations

from autoslim.operators import depth, distill, heads, precision, quantize, recovery, width
from autoslim.operators.base import BuildContext, Operator

__all__ = ["OPERATORS", "BuildContext", "Operator"]

# In build order; the runtime converts the built model after the last of them.
OPERATORS: tuple[Operator, ...] = (
    depth.OPERATOR,
    heads.OPERATOR,
    width.OPERATOR,
    recovery.OPERATOR,
    distill.OPERATOR,
    precision.OPERATOR,
    quantize.OPERATOR,
)
