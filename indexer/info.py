"""What an index holds, as one dict: printed by `engine info` and served at ``GET /info``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from indexer.fusion import DEFAULT_MODE
from indexer.lexical import LEXICAL_KEY
from indexer.store import Store


def index_info(store: Store, index_dir: str | Path) -> dict[str, Any]:
    """Model, dimension, FAISS index type, counts, size, dates and generation of an open index."""
    settings = store.settings
    return {
        "index": str(index_dir),
        "model": settings["model"],
        "fingerprint": settings["fingerprint"],
        "dim": settings["dim"],
        "max_length": settings["max_length"],
        "pooling": settings["profile"]["pooling"],
        "default_instruction": settings.get("default_instruction"),
        "passages": settings.get("passages"),
        "index_type": store.spec.type,
        "index_factory": store.spec.factory,
        "index_params": store.spec.params,
        "vector_dtype": str(store.vector_dtype),
        # The BM25 index's documents at its last recorded commit (None: not built yet).
        "lexical_documents": (settings.get(LEXICAL_KEY) or {}).get("documents"),
        "default_mode": DEFAULT_MODE,
        **store.stats(),
        "generation": store.generation,
        "engine_version": settings["engine_version"],
        "created": settings["created"],
        "updated": settings["updated"],
    }
