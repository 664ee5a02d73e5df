"""engine: a retrieval search engine on LLM text embeddings.

``from engine import Index`` is the Python API (:mod:`engine.api`). It is loaded on first
use (a module ``__getattr__``), so ``import engine`` and ``engine --help`` stay light: no
FAISS, no torch. By name only (no static import), so the core imports nothing above it.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["CheckReport", "Document", "Hit", "Index", "__version__"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("engine.api"), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
