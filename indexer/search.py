"""Query -> prompt -> encoder -> store (or a Milvus collection) -> hits."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from engine.encoder import Encoder
from engine.errors import EngineError
from engine.instructions import check_instruction
from indexer.folder import reporting_damage
from indexer.passages import best_per_document
from indexer.schema import check_compatible
from indexer.store import PASSAGE_FIELDS, Store
from indexer.vector_index import SearchKnobs

SNIPPET_CHARS = 240
# A passage search first fetches this many passages per document asked for, more if
# too few distinct documents come back.
PASSAGES_PER_HIT = 4


@dataclass(frozen=True)
class Hit:
    """One document found. In an index of passages ``score`` is its best passage's,
    ``snippet`` that passage's text and ``passage`` where it lies (position, token and
    character offsets in the document's text); otherwise ``passage`` is None."""

    rank: int
    score: float
    id: int
    doc_id: str
    source: str
    title: str
    snippet: str
    passage: dict[str, int] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class SearchIndex(Protocol):
    """What search needs from where the vectors live: the local store or a Milvus collection."""

    @property
    def settings(self) -> dict[str, Any]: ...

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def get(self, ids: Iterable[int]) -> list[dict[str, Any]]: ...

    def get_passages(self, ids: Iterable[int]) -> list[dict[str, Any]]: ...


def snippet(text: str, limit: int = SNIPPET_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def describe_index(index: SearchIndex) -> str:
    """How errors name an index: ``index at DIR`` or the Milvus collection's own name."""
    return f"index at {index.folder}" if isinstance(index, Store) else str(index)


def load_encoder_for(
    index: SearchIndex, model: str | None = None, device: str | None = None
) -> Encoder:
    """The encoder an index was built with; a different ``model`` is refused."""
    settings = index.settings
    encoder = Encoder.load(model or settings["model"], device=device)
    # The model first: a length error would hide that the model is the wrong one.
    check_compatible(
        settings,
        {**encoder.describe(), "max_length": settings["max_length"]},
        describe_index(index),
        fix="search it with the model it was built with",
    )
    encoder.set_max_length(settings["max_length"])
    return encoder


def make_hits(
    scores: np.ndarray, ids: np.ndarray, rows: Mapping[int, Mapping[str, Any]]
) -> list[list[Hit]]:
    """Ranked hits per query from search results and document rows (ids < 0 are empty slots)."""
    results = []
    for row_scores, row_ids in zip(scores, ids, strict=True):
        valid = [(float(s), int(i)) for s, i in zip(row_scores, row_ids, strict=True) if i >= 0]
        found = [(score, doc) for score, doc in valid if doc in rows]
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
                for rank, (score, doc) in enumerate(found, start=1)
            ]
        )
    return results


def resolve_instruction(
    index: SearchIndex, instruction: str | None, no_instruct: bool
) -> str | None:
    """The instruction a search uses: the one asked for, none, or the index's default.

    The one home of this choice for `engine search` and `engine serve`: ``instruction``
    None means "the index's default", an empty one and ``no_instruct`` mean none; both
    together are refused by :func:`engine.instructions.check_instruction`.
    """
    check_instruction(instruction, no_instruct)
    if no_instruct:
        return None
    if instruction is None:
        return index.settings.get("default_instruction")
    return instruction or None


def check_queries(queries: Sequence[str], k: int) -> None:
    if any(not q.strip() for q in queries):
        raise EngineError("empty query")
    if k < 1:
        raise EngineError("-k must be at least 1")


def hits_for(
    index: SearchIndex,
    vectors: np.ndarray,
    k: int,
    knobs: SearchKnobs = SearchKnobs(),  # noqa: B008 - frozen
) -> list[list[Hit]]:
    """Top-``k`` hits for each query vector (rows of ``vectors``): search_queries() and the server.

    ``knobs``: nprobe for IVF, ef_search for HNSW (a Store's FAISS index or a Milvus one).
    An index of passages answers ``k`` distinct documents (see :func:`passage_hits`).
    """
    damage = reporting_damage(index.folder) if isinstance(index, Store) else nullcontext()
    with damage:
        if isinstance(index.settings.get("passages"), dict):
            return passage_hits(index, vectors, k, knobs)
        scores, ids = index.search(vectors, k, knobs)
        rows = {row["id"]: row for row in index.get({int(i) for i in ids.ravel() if i >= 0})}
    return make_hits(scores, ids, rows)


def passage_hits(
    index: SearchIndex,
    vectors: np.ndarray,
    k: int,
    knobs: SearchKnobs = SearchKnobs(),  # noqa: B008 - frozen
) -> list[list[Hit]]:
    """``k`` distinct documents per query, each scored by its best passage (the max rule).

    Passages are fetched ``PASSAGES_PER_HIT * k`` at a time, four times more while a
    query has fewer than ``k`` distinct documents and the index has more passages;
    removed documents' passages are gone from the index (or skipped as tombstones).
    """
    results: list[list[Hit] | None] = [None] * len(vectors)
    fetch = PASSAGES_PER_HIT * k
    todo = list(range(len(vectors)))
    while todo:
        scores, ids = index.search(vectors[todo], fetch, knobs)
        rows = {
            row["passage"]["id"]: row
            for row in index.get_passages({int(i) for i in ids.ravel() if i >= 0})
        }
        left = []
        for query, row_scores, row_ids in zip(todo, scores, ids, strict=True):
            ranked = [
                (float(score), (rows[i]["source"], rows[i]["doc_id"]), rows[i])
                for score, i in zip(row_scores.tolist(), row_ids.tolist(), strict=True)
                if i >= 0 and i in rows
            ]
            best = best_per_document(ranked, k)
            if len(best) < k and int((row_ids >= 0).sum()) == fetch and fetch < 2**20:
                left.append(query)  # more passages may hold more documents
                continue
            results[query] = [
                Hit(
                    rank=rank,
                    score=score,
                    id=row["id"],
                    doc_id=row["doc_id"],
                    source=row["source"],
                    title=row["title"],
                    snippet=" ".join(row["passage"]["text"].split()),
                    passage={key: row["passage"][key] for key in PASSAGE_FIELDS},
                )
                for rank, (score, _, row) in enumerate(best, start=1)
            ]
        todo, fetch = left, fetch * 4
    return [hits or [] for hits in results]


def search_queries(
    index: str | Path | SearchIndex,
    queries: Sequence[str],
    *,
    k: int = 10,
    instruction: str | None = None,
    encoder: Encoder | None = None,
    nprobe: int | None = None,
    ef_search: int | None = None,
) -> list[list[Hit]]:
    """Top-``k`` hits per query. ``instruction`` changes only the query embedding.

    ``index`` is an index folder, an open :class:`Store`, or an open
    :class:`indexer.milvus.MilvusIndex`. ``nprobe`` (IVF) and ``ef_search`` (HNSW)
    trade speed for recall (None: the index's defaults). Only the hits'
    rows are read from SQLite.
    """
    index = Store.open(index) if isinstance(index, (str, Path)) else index
    check_queries(queries, k)
    encoder = encoder or load_encoder_for(index)
    knobs = SearchKnobs(nprobe=nprobe, ef_search=ef_search)
    return hits_for(index, encoder.encode_queries(list(queries), instruction), k, knobs)
