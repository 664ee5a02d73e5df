"""Query -> prompt -> encoder -> store -> hits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from engine.encoder import Encoder
from engine.errors import EngineError
from indexer.store import Store, check_compatible, reporting_damage

SNIPPET_CHARS = 240


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float
    id: int
    doc_id: str
    source: str
    title: str
    snippet: str

    def to_dict(self) -> dict:
        return asdict(self)


def snippet(text: str, limit: int = SNIPPET_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def load_encoder_for(store: Store, model: str | None = None, device: str | None = None) -> Encoder:
    """The encoder an index was built with; a different ``model`` is refused."""
    settings = store.settings
    encoder = Encoder.load(model or settings["model"], device=device)
    # The model first: a length error would hide that the model is the wrong one.
    check_compatible(
        settings, {**encoder.describe(), "max_length": settings["max_length"]}, store.folder
    )
    encoder.set_max_length(settings["max_length"])
    return encoder


def search(
    index_dir: str | Path | Store,
    queries: Sequence[str],
    *,
    k: int = 10,
    instruction: str | None = None,
    encoder: Encoder | None = None,
) -> list[list[Hit]]:
    """Top-``k`` hits per query. ``instruction`` changes only the query embedding."""
    store = index_dir if isinstance(index_dir, Store) else Store.open(index_dir)
    if any(not q.strip() for q in queries):
        raise EngineError("empty query")
    if k < 1:
        raise EngineError("-k must be at least 1")
    encoder = encoder or load_encoder_for(store)
    vectors = encoder.encode_queries(list(queries), instruction)
    with reporting_damage(store.folder):
        return _hits(store, *store.search(vectors, k))


def _hits(store: Store, scores, ids) -> list[list[Hit]]:
    results = []
    for row_scores, row_ids in zip(scores, ids, strict=True):
        valid = [(float(s), int(i)) for s, i in zip(row_scores, row_ids, strict=True) if i >= 0]
        rows = {r["id"]: r for r in store.get(i for _, i in valid)}
        results.append(
            [
                Hit(
                    rank=rank,
                    score=score,
                    id=doc,
                    doc_id=rows[doc]["doc_id"],
                    source=rows[doc]["source"],
                    title=rows[doc]["title"],
                    snippet=snippet(rows[doc]["text"]),
                )
                for rank, (score, doc) in enumerate(valid, start=1)
                if doc in rows
            ]
        )
    return results
