"""autoslim: multi-objective search over compression recipes for causal LMs."""

from __future__ import annotations

__version__ = "0.1.0"
