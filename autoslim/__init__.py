"""autoslim: multi-objective search over compression recipes for causal LMs."""

from __future__ import annotations

from autoslim import quiet

__version__ = "0.1.0"

quiet.install()
