"""Query -> prompt -> encoder -> store (or a Milvus collection) -> hits.

Three modes (``--mode``): ``dense`` (the query's embedding against the vector index),
``lexical`` (BM25 over the lexical index: no model needed) and ``hybrid`` (both, fused by
:mod:`indexer.fusion` over at least 100 candidates a side). :func:`ranked` is the one place
a mode is carried out; the CLI, the server and ``engine bench beir`` all go through it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from engine.errors import EngineError
from engine.instructions import check_instruction
from indexer import fusion as fusion_module
from indexer.filters import Condition
from indexer.filters import parse as parse_filter
from indexer.folder import reporting_damage
from indexer.fusion import Fusion, fuse
from indexer.passages import best_per_document
from indexer.schema import check_compatible
from indexer.store import PASSAGE_FIELDS, Store
from indexer.vector_index import SearchKnobs

if TYPE_CHECKING:  # torch is imported only when a query is embedded: lexical searches skip it
    from engine.encoder import Encoder

SNIPPET_CHARS = 240
# A passage search first fetches this many passages per document asked for, more if
# too few distinct documents come back.
PASSAGES_PER_HIT = 4
# The most passages one search asks for (Milvus's own cap on a search's limit).
MAX_FETCH = 16_384


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
    from engine.encoder import Encoder

    encoder = Encoder.load(model or index.settings["model"], device=device)
    fit_encoder(index, encoder)
    return encoder


def fit_encoder(
    index: SearchIndex, encoder: Encoder, fix: str = "search it with the model it was built with"
) -> None:
    """Refuse an encoder of another model than ``index``'s (``fix``: what the error advises),
    and set its length to the index's."""
    settings = index.settings
    # The model first: a length error would hide that the model is the wrong one.
    check_compatible(
        settings,
        {**encoder.describe(), "max_length": settings["max_length"]},
        describe_index(index),
        fix=fix,
    )
    if encoder.max_length != settings["max_length"]:
        encoder.set_max_length(settings["max_length"])


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


def has_lexical(index: SearchIndex) -> bool:
    """Whether ``index`` can search lexically (the local store; not a Milvus collection)."""
    return hasattr(index, "lexical_search")


def has_passages(index: SearchIndex) -> bool:
    """Whether ``index`` holds passages (``engine index --passages``): its vectors are passages'."""
    return isinstance(index.settings.get("passages"), dict)


def resolve_mode(index: SearchIndex, mode: str | None) -> str:
    """The mode asked for, or the default: DEFAULT_MODE where there is a lexical side, else
    dense. An index of passages has every mode (its lexical side holds passages)."""
    if mode is None:
        return fusion_module.DEFAULT_MODE if has_lexical(index) else "dense"
    try:
        fusion_module.check_mode(mode)
    except ValueError as exc:
        raise EngineError(str(exc)) from None
    if mode != "dense" and not has_lexical(index):
        raise EngineError(f"--mode {mode} needs a lexical index; {describe_index(index)} has none")
    return mode


def resolve_fusion(method: str | None = None, alpha: float | None = None) -> Fusion:
    """:func:`indexer.fusion.resolve` with its errors as one line."""
    try:
        return fusion_module.resolve(method, alpha)
    except ValueError as exc:
        raise EngineError(str(exc)) from None


def ranked(
    index: SearchIndex,
    vectors: np.ndarray | None,
    queries: Sequence[str],
    k: int,
    knobs: SearchKnobs = SearchKnobs(),  # noqa: B008 - frozen
    *,
    mode: str = "dense",
    fusion: Fusion = Fusion(),  # noqa: B008 - frozen
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, ids) per query, rows padded with id -1, in the given mode.

    ``vectors`` (the queries' embeddings) are needed by dense and hybrid, ``queries`` (the
    texts) by lexical and hybrid. Hybrid takes ``fusion.candidates(k)`` from each side.
    ``allowed`` (document ids matching a filter) restricts every side inside its search.
    """
    if mode == "dense":
        return dense_search(index, vectors, k, knobs, allowed)
    if mode == "lexical":
        return index.lexical_search(queries, k, allowed)
    depth = fusion.candidates(k)
    dense = dense_search(index, vectors, depth, knobs, allowed)
    return fuse_rows(dense, index.lexical_search(queries, depth, allowed), k, fusion)


def dense_search(
    index: SearchIndex,
    vectors: np.ndarray,
    k: int,
    knobs: SearchKnobs,
    allowed: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """The vector index's top ``k``, filtered inside the search when ``allowed`` is given."""
    if allowed is None:
        return index.search(vectors, k, knobs)
    return index.search(vectors, k, knobs, allowed=allowed)


def allowed_ids(
    index: SearchIndex, where: Condition | None, *, vectors: bool = False
) -> np.ndarray | None:
    """The ids a filter lets through (None: no filter); see :meth:`Store.matching`. On a
    Milvus collection: the filter as its expression, which its search applies."""
    if where is None:
        return None
    if not hasattr(index, "matching"):
        raise EngineError(f"--where is not supported on {describe_index(index)} yet")
    return index.matching(where, vectors=vectors)


def fuse_rows(
    dense: tuple[np.ndarray, np.ndarray],
    lexical: tuple[np.ndarray, np.ndarray],
    k: int,
    fusion: Fusion,
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's dense and lexical candidates (rows of (n, depth) arrays) fused into its
    top ``k``, as (n, k) arrays padded with id -1."""
    dense_scores, dense_ids = dense
    lexical_scores, lexical_ids = lexical
    fused = [
        fuse((dense_scores[i], dense_ids[i]), (lexical_scores[i], lexical_ids[i]), k, fusion)
        for i in range(len(dense_ids))
    ]
    return pad(fused, k)


def pad(rows: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-query (scores, ids) of any lengths as (n, k) arrays, empty slots id -1."""
    scores = np.zeros((len(rows), k), dtype=np.float32)
    ids = np.full((len(rows), k), -1, dtype=np.int64)
    for row, (row_scores, row_ids) in enumerate(rows):
        scores[row, : len(row_ids)] = row_scores[:k]
        ids[row, : len(row_ids)] = row_ids[:k]
    return scores, ids


def hits_for(
    index: SearchIndex,
    vectors: np.ndarray | None,
    k: int,
    knobs: SearchKnobs = SearchKnobs(),  # noqa: B008 - frozen
    *,
    queries: Sequence[str] = (),
    mode: str = "dense",
    fusion: Fusion = Fusion(),  # noqa: B008 - frozen
    where: Condition | None = None,
) -> list[list[Hit]]:
    """Top-``k`` hits for each query: search_queries() and the server.

    ``vectors``: the queries' embeddings (dense, hybrid); ``queries``: their texts
    (lexical, hybrid). ``knobs``: nprobe for IVF, ef_search for HNSW (a Store's FAISS
    index or a Milvus one). An index of passages answers ``k`` distinct documents by
    their best passage, in every mode (see :func:`passage_hits`). ``where``: a filter
    (:mod:`indexer.filters`) applied inside the search: ``k`` hits whenever ``k``
    documents match.
    """
    damage = reporting_damage(index.folder) if isinstance(index, Store) else nullcontext()
    with damage:
        if has_passages(index):
            allowed = allowed_ids(index, where, vectors=True)
            return passage_hits(
                index, vectors, k, knobs, allowed, queries=queries, mode=mode, fusion=fusion
            )
        allowed = allowed_ids(index, where)
        scores, ids = ranked(
            index, vectors, queries, k, knobs, mode=mode, fusion=fusion, allowed=allowed
        )
        rows = {row["id"]: row for row in index.get({int(i) for i in ids.ravel() if i >= 0})}
    return make_hits(scores, ids, rows)


# A document found through one side of a passage search: (score, its best passage's row).
Ranked = list[tuple[float, dict[str, Any]]]


def passage_hits(
    index: SearchIndex,
    vectors: np.ndarray | None,
    k: int,
    knobs: SearchKnobs = SearchKnobs(),  # noqa: B008 - frozen
    allowed: np.ndarray | None = None,
    *,
    queries: Sequence[str] = (),
    mode: str = "dense",
    fusion: Fusion = Fusion(),  # noqa: B008 - frozen
) -> list[list[Hit]]:
    """``k`` distinct documents per query, each scored by its best passage (the max rule);
    ``allowed``: the passage ids a filter lets through.

    Dense and lexical rank passages (by embedding; by BM25 over ``title passage``) and a
    document takes its best passage's score. Hybrid ranks documents so on each side
    (``fusion.candidates(k)`` of them at most) and fuses the two document rankings as
    :func:`indexer.fusion.fuse` fuses whole documents; a hit's passage is its best one on
    the side that ranks the document higher (dense on a tie).
    """
    if mode == "dense":
        found = _dense_documents(index, vectors, k, k, knobs, allowed)
        return [_passage_hits(ranked) for ranked in found]
    if mode == "lexical":
        found = _lexical_documents(index, queries, k, k, allowed)
        return [_passage_hits(ranked) for ranked in found]
    depth = fusion.candidates(k)
    dense = _dense_documents(index, vectors, depth, k, knobs, allowed)
    lexical = _lexical_documents(index, queries, depth, k, allowed)
    results = []
    for dense_found, lexical_found in zip(dense, lexical, strict=True):
        sides = [
            {row["id"]: (rank, row) for rank, (_, row) in enumerate(found)}
            for found in (dense_found, lexical_found)
        ]
        scores, ids = fuse(_as_arrays(dense_found), _as_arrays(lexical_found), k, fusion)
        fused = []
        for score, doc in zip(scores.tolist(), ids.tolist(), strict=True):
            # min() keeps the first of equal ranks: dense's.
            _, row = min((side[doc] for side in sides if doc in side), key=lambda e: e[0])
            fused.append((float(score), row))
        results.append(_passage_hits(fused))
    return results


def _as_arrays(found: Ranked) -> tuple[np.ndarray, np.ndarray]:
    """One side's documents as :func:`fuse` takes them: (scores, document ids), best first."""
    return (
        np.asarray([score for score, _ in found], dtype=np.float32),
        np.asarray([row["id"] for _, row in found], dtype=np.int64),
    )


def _dense_documents(
    index: SearchIndex,
    vectors: np.ndarray,
    depth: int,
    enough: int,
    knobs: SearchKnobs,
    allowed: np.ndarray | None,
) -> list[Ranked]:
    return documents_by_best_passage(
        index,
        len(vectors),
        lambda todo, fetch: dense_search(index, vectors[todo], fetch, knobs, allowed),
        depth,
        enough,
    )


def _lexical_documents(
    index: SearchIndex,
    queries: Sequence[str],
    depth: int,
    enough: int,
    allowed: np.ndarray | None,
) -> list[Ranked]:
    return documents_by_best_passage(
        index,
        len(queries),
        lambda todo, fetch: index.lexical_search([queries[i] for i in todo], fetch, allowed),
        depth,
        enough,
    )


def documents_by_best_passage(
    index: SearchIndex,
    count: int,
    search: Callable[[list[int], int], tuple[np.ndarray, np.ndarray]],
    depth: int,
    enough: int,
) -> list[Ranked]:
    """Per query, up to ``depth`` distinct documents with their best passage, best first.

    ``search(queries, fetch)`` returns the top ``fetch`` passages (scores, ids) of those
    queries. Passages are fetched ``PASSAGES_PER_HIT * depth`` at a time, four times more
    while a query has fewer than ``enough`` distinct documents and the index has more
    passages; removed documents' passages are gone from the index (or skipped as
    tombstones).
    """
    results: list[Ranked | None] = [None] * count
    fetch = min(PASSAGES_PER_HIT * depth, MAX_FETCH)
    todo = list(range(count))
    while todo:
        scores, ids = search(todo, fetch)
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
            best = best_per_document(ranked, depth)
            full = int((row_ids >= 0).sum()) == fetch
            if len(best) < enough and full and fetch < MAX_FETCH:
                left.append(query)  # more passages may hold more documents
                continue
            results[query] = [(score, row) for score, _, row in best]
        todo, fetch = left, min(fetch * 4, MAX_FETCH)
    return [found or [] for found in results]


def _passage_hits(found: Ranked) -> list[Hit]:
    return [
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
        for rank, (score, row) in enumerate(found, start=1)
    ]


def search_queries(
    index: str | Path | SearchIndex,
    queries: Sequence[str],
    *,
    k: int = 10,
    instruction: str | None = None,
    encoder: Encoder | None = None,
    nprobe: int | None = None,
    ef_search: int | None = None,
    mode: str | None = None,
    fusion: Fusion | None = None,
    where: str | Condition | None = None,
    vectors: np.ndarray | None = None,
) -> list[list[Hit]]:
    """Top-``k`` hits per query. ``instruction`` changes only the query embedding.

    ``index`` is an index folder, an open :class:`Store`, or an open
    :class:`indexer.milvus.MilvusIndex`. ``nprobe`` (IVF) and ``ef_search`` (HNSW)
    trade speed for recall (None: the index's defaults). ``mode``: dense, lexical or
    hybrid (None: the default, see :func:`resolve_mode`); ``fusion``: how hybrid fuses
    (None: the default). ``where``: a filter expression (:mod:`indexer.filters`) or a
    parsed one. ``vectors``: the queries' embeddings when already made (``engine serve``
    embeds many requests' queries in one batch); else the encoder embeds them. Lexical
    searches load no model. Only the hits' rows are read from SQLite.
    """
    index = Store.open(index) if isinstance(index, (str, Path)) else index
    check_queries(queries, k)
    condition = parse_filter(where) if isinstance(where, str) else where
    mode = resolve_mode(index, mode)
    if mode == "lexical":
        vectors = None
    elif vectors is None:
        encoder = encoder or load_encoder_for(index)
        vectors = encoder.encode_queries(list(queries), instruction)
    knobs = SearchKnobs(nprobe=nprobe, ef_search=ef_search)
    return hits_for(
        index,
        vectors,
        k,
        knobs,
        queries=queries,
        mode=mode,
        fusion=fusion or resolve_fusion(),
        where=condition,
    )
