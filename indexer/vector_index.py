"""How vectors are searched: the FAISS index types, built from the store's vectors.

The store (SQLite) keeps every vector; a FAISS index is a derived, rebuildable
snapshot. This module owns everything FAISS-specific: which index a type name
means, building and training it from a stream of vectors, adding and removing
ids, search-time knobs, reading (memory-mapped) and writing snapshots, GPUs.

Types (``engine index --index-type``)::

    flat       exact inner product over fp32 (IndexFlatIP), today's default below AUTO_EXACT_LIMIT
    flat-fp16  exact scan over fp16 codes: half the memory, scores within ~1e-3
    sq8        exact scan over 8-bit scalar codes: a quarter of the memory
    hnsw       HNSW32 graph over fp16 codes; no training; knob --ef-search
    ivf-flat   IVF, nlist ~ 2*sqrt(n) trained on a sample, fp32 lists; knob --nprobe
    ivf-pq     IVF + product quantisation (dim/8 bytes a vector), the top candidates re-scored
               exactly with the stored vectors (RERANK_FACTOR x k); knob --nprobe
    auto       flat while documents x dim <= AUTO_EXACT_LIMIT, ivf-pq above (see below)
    other      any faiss index_factory string, e.g. "IVF1024,SQ8" or "HNSW16,Flat"

Why ``auto`` picks ivf-pq at scale (the figures: bench/results/README.md, "FAISS index types"):
ivf-pq is the one type that comes near every goal of the index at 1M documents at once (recall,
single-query latency, cold start, disk), because its codes only pick candidates and the exact
scores come from the fp16 vectors SQLite keeps anyway. hnsw answers faster and with higher recall
but stores a second fp16 copy plus its graph on disk; choose it with ``--index-type hnsw`` when
memory and disk are cheap. Indexes that ``auto`` made hnsw
before keep their graph (their spec is stored); only a new or exact ``auto`` index becomes ivf-pq.

Removing ids: flat, SQ and IVF indexes remove in place (``remove_ids``). An HNSW
graph cannot drop nodes, so removed ids become tombstones: the store lists them
and every search filters them out with an ``IDSelector`` (exact, no over-fetch
needed, as faiss applies the selector during the graph walk). The store compacts
(rebuilds from SQLite) when tombstones pass a quarter of the index.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from engine.errors import EngineError

# Exact search while documents x dim stays at or below this (about 50k x 384 or 5k x 4096),
# where a flat scan is still cheap (flat latencies: bench/results/README.md, FAISS index types).
AUTO_EXACT_LIMIT = 20_000_000
# What auto builds above the limit (the module docstring says why).
AUTO_APPROXIMATE_TYPE = "ivf-pq"
NAMED_TYPES = ("flat", "flat-fp16", "sq8", "hnsw", "ivf-flat", "ivf-pq")
TYPE_CHOICES = ("auto", *NAMED_TYPES)
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
# Defaults chosen on the benchmark to reach recall@10 >= 0.95 (bench/results/ann-*.json).
DEFAULT_EF_SEARCH = 128
DEFAULT_NPROBE_FRACTION = 1 / 32  # of nlist, at least MIN_NPROBE
MIN_NPROBE = 64
# ivf-pq fetches this many times k candidates and re-scores them with the stored vectors.
RERANK_FACTOR = 10
# ivf-pq codes: one byte per this many dimensions (48 bytes at 384-d, 16x smaller than fp16):
# PQ{dim/8}x8, or PQ{dim/4}x4 below 256 x 39 vectors (too few to train 256 centroids). The codes
# only pick candidates (re-scoring is exact), so they can be coarse; what they cost on disk sits
# next to SQLite's fp16 copy; coarser codes than these lost recall@10 on SciFact (both figures:
# bench/results/README.md, FAISS index types).
PQ_DIMS_PER_BYTE = 8
# IVF training sample: faiss wants 39..256 points per centroid.
TRAIN_POINTS_PER_LIST = 40
MIN_TRAIN_POINTS = 1024
# An IVF index trained for n vectors is retrained when the corpus grows past RETRAIN_GROWTH x n.
RETRAIN_GROWTH = 4


@dataclass(frozen=True)
class IndexSpec:
    """What to build: the type asked for and the faiss factory string it resolved to."""

    type: str
    factory: str
    dim: int
    trained_for: int = 0  # corpus size the IVF parameters were chosen for
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def is_ivf(self) -> bool:
        return "IVF" in self.factory

    @property
    def is_hnsw(self) -> bool:
        return "HNSW" in self.factory

    @property
    def can_remove(self) -> bool:
        """False where removal needs tombstones (graph indexes)."""
        return not (self.is_hnsw or "NSG" in self.factory)

    @property
    def needs_training(self) -> bool:
        """IVF lists, PQ codebooks, SQ8 ranges: learnt from a sample before adding."""
        return not faiss.index_factory(
            self.dim, self.factory, faiss.METRIC_INNER_PRODUCT
        ).is_trained

    def to_settings(self) -> dict[str, Any]:
        return {"index": asdict(self)}

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> IndexSpec:
        """The stored spec; indexes from before index types were exact fp32 flat."""
        stored = settings.get("index")
        if not stored:
            return resolve("flat", 0, int(settings["dim"]))
        return cls(**stored)

    def describe(self) -> str:
        knobs = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.type} ({self.factory}{'; ' + knobs if knobs else ''})"


def validate_type(index_type: str) -> str:
    """A named type, ``auto``, or a factory string faiss accepts; else a one-line error."""
    name = index_type.strip()
    if name.lower() in TYPE_CHOICES:
        return name.lower()
    try:
        faiss.index_factory(8, name.replace("{dim}", "8"), faiss.METRIC_INNER_PRODUCT)
    except RuntimeError:
        raise EngineError(
            f"unknown --index-type {index_type!r}: use one of {', '.join(TYPE_CHOICES)} "
            "or a faiss index_factory string such as 'IVF256,SQ8'"
        ) from None
    # faiss accepts these graphs but aborts the process when the first vector is added.
    if any(int(m) < 2 for m in re.findall(r"HNSW(\d+)", name)):
        raise EngineError(
            f"--index-type {index_type!r}: an HNSW graph needs at least 2 links (HNSW2)"
        )
    return name


def choose_nlist(count: int) -> int:
    """About 2 sqrt(n) lists (a power of two; training stays minutes on 2 cores at 1M)."""
    nlist = 2 ** round(math.log2(2 * math.sqrt(count)))
    return max(1, min(nlist, count // 39))


def resolve(index_type: str, count: int, dim: int) -> IndexSpec:
    """The concrete spec for ``index_type`` on ``count`` vectors of ``dim``."""
    if index_type == "auto":
        chosen = "flat" if count * dim <= AUTO_EXACT_LIMIT else AUTO_APPROXIMATE_TYPE
        spec = resolve(chosen, count, dim)
        return IndexSpec("auto", spec.factory, dim, spec.trained_for, spec.params)
    if index_type == "flat":
        return IndexSpec(index_type, "Flat", dim)
    if index_type == "flat-fp16":
        return IndexSpec(index_type, "SQfp16", dim)
    if index_type == "sq8":
        return IndexSpec(index_type, "SQ8", dim)
    if index_type == "hnsw":
        return IndexSpec(
            index_type,
            f"HNSW{HNSW_M},SQfp16",
            dim,
            params={"ef_search": DEFAULT_EF_SEARCH, "ef_construction": HNSW_EF_CONSTRUCTION},
        )
    if index_type in ("ivf-flat", "ivf-pq"):
        if count < MIN_TRAIN_POINTS:  # too few vectors to train lists: exact until there are
            return IndexSpec(index_type, "Flat", dim, count)
        nlist = choose_nlist(count)
        nprobe = default_nprobe(nlist)
        if index_type == "ivf-flat":
            factory = f"IVF{nlist},Flat"
        else:
            bits = 8 if count >= 256 * 39 else 4  # enough points to train 256 centroids
            factory = f"IVF{nlist},PQ{_pq_subquantizers(dim, bits)}x{bits}"
        params = {"nlist": nlist, "nprobe": nprobe}
        if index_type == "ivf-pq":
            params["rerank"] = RERANK_FACTOR
        return IndexSpec(index_type, factory, dim, count, params)
    spec = IndexSpec(index_type, index_type.replace("{dim}", str(dim)), dim, count)
    if spec.is_hnsw:
        spec.params["ef_search"] = DEFAULT_EF_SEARCH
    if spec.is_ivf:
        nlist = int(re.search(r"IVF(\d+)", spec.factory).group(1))
        spec.params["nprobe"] = default_nprobe(nlist)
    return spec


def default_nprobe(nlist: int) -> int:
    return min(nlist, max(MIN_NPROBE, round(nlist * DEFAULT_NPROBE_FRACTION)))


def _pq_subquantizers(dim: int, bits: int) -> int:
    """Sub-quantizers of ``bits`` each for a code of dim/PQ_DIMS_PER_BYTE bytes, a divisor of dim."""
    for m in range(max(1, dim * 8 // (PQ_DIMS_PER_BYTE * bits)), 0, -1):
        if dim % m == 0:
            return m
    return 1


def is_stale(spec: IndexSpec, count: int) -> bool:
    """Whether to re-resolve and rebuild: auto crossed its threshold, IVF outgrew its lists.

    An ``auto`` index that an older engine made hnsw stays hnsw while it is large.
    """
    fresh = resolve(spec.type, count, spec.dim)
    if fresh.factory == spec.factory:
        return False
    if spec.type == "auto" and spec.is_hnsw and fresh.factory != "Flat":
        return False
    if spec.is_ivf and fresh.is_ivf and spec.needs_training:
        return not spec.trained_for / RETRAIN_GROWTH <= count <= spec.trained_for * RETRAIN_GROWTH
    return True


# ------------------------------------------------------------------ building
def new_index(spec: IndexSpec) -> faiss.Index:
    """An empty index that takes ids (IVF natively, the rest through IndexIDMap)."""
    index = faiss.index_factory(spec.dim, spec.factory, faiss.METRIC_INNER_PRODUCT)
    if spec.is_hnsw:
        faiss.downcast_index(index).hnsw.efConstruction = int(
            spec.params.get("ef_construction", HNSW_EF_CONSTRUCTION)
        )
    if not isinstance(faiss.downcast_index(index), faiss.IndexIVF):
        index = faiss.IndexIDMap(index)
    return index


def build(
    spec: IndexSpec,
    chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    *,
    sample: np.ndarray | None = None,
) -> faiss.Index:
    """An index of ``spec`` filled from ``(ids, vectors)`` chunks (streamed, not concatenated).

    Trainable types are trained on ``sample`` (a few vectors per list) first.
    """
    index = new_index(spec)
    if not index.is_trained:
        if sample is None or len(sample) == 0:
            return index  # nothing to train on yet: the store trains it when vectors come
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    for ids, vectors in chunks:
        add(index, ids, vectors)
    return index


def training_size(spec: IndexSpec) -> int:
    """How many vectors to sample for training ``spec``."""
    if not spec.needs_training:
        return 0
    nlist = int(spec.params.get("nlist", 1))
    return max(MIN_TRAIN_POINTS, nlist * TRAIN_POINTS_PER_LIST, 256 * 39)


def add(index: faiss.Index, ids: np.ndarray, vectors: np.ndarray) -> None:
    if len(ids):
        index.add_with_ids(
            np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64)
        )


def remove(index: faiss.Index, ids: Iterable[int]) -> None:
    """Remove ids in place (only for specs that ``can_remove``)."""
    wanted = np.asarray(list(ids), dtype=np.int64)
    if len(wanted):
        index.remove_ids(wanted)


def index_ids(index: faiss.Index) -> np.ndarray:
    """Every id held by the index (for catching an old snapshot up with SQLite)."""
    if isinstance(index, faiss.IndexIDMap):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    ivf = faiss.extract_index_ivf(index)
    lists = ivf.invlists
    parts = [
        faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
        for i in range(lists.nlist)
        if lists.list_size(i)
    ]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


# ----------------------------------------------------------------- searching
@dataclass(frozen=True)
class SearchKnobs:
    """Search-time accuracy/speed knobs; None keeps the index's stored default."""

    nprobe: int | None = None
    ef_search: int | None = None


def search(
    index: faiss.Index,
    spec: IndexSpec,
    vectors: np.ndarray,
    k: int,
    *,
    knobs: SearchKnobs = SearchKnobs(),  # noqa: B008 - frozen
    tombstones: np.ndarray | None = None,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, ids) per query; tombstoned ids never come back, and only
    ``allowed`` ids when given (a filter: live ids only, so tombstones need no check)."""
    params = _search_params(spec, knobs)
    if allowed is not None:
        params.sel = faiss.IDSelectorBatch(allowed)
    elif tombstones is not None and len(tombstones):
        params.sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(tombstones))
    queries = np.ascontiguousarray(vectors, dtype=np.float32)
    if _is_gpu(index):  # tombstones were left out when the GPU copy was made
        _apply_gpu_knobs(index, spec, knobs)
        return index.search(queries, k)
    return index.search(queries, k, params=params)


def top_k(
    index: Any,
    spec: IndexSpec,
    vectors: np.ndarray,
    k: int,
    stored: Callable[[list[int]], np.ndarray],
    *,
    knobs: SearchKnobs = SearchKnobs(),  # noqa: B008 - frozen
    tombstones: np.ndarray | None = None,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, ids) over the live vectors of ``index`` (at most that many); an index
    with a ``rerank`` factor ranks that many times ``k`` candidates, which the ``stored``
    vectors score exactly.

    ``allowed`` (live ids, a filter) restricts the search inside FAISS (an ``IDSelector``).
    An approximate index (IVF's probed lists, HNSW's graph) may then find fewer than ``k``
    of them; a query that comes back short, and a filter allowing at most ``EXACT_FILTERED``
    ids, is answered by scoring the allowed ids' stored vectors exactly: ``k`` hits
    whenever ``k`` documents match.
    """
    if allowed is not None:
        return _filtered_top_k(index, spec, vectors, k, stored, knobs, allowed)
    live = index.ntotal - (0 if tombstones is None else len(tombstones))
    if live <= 0:
        return _empty(len(vectors))
    k = max(1, min(k, live))
    factor = int(spec.params.get("rerank", 0))
    fetch = min(live, k * factor) if factor else k
    scores, ids = search(index, spec, vectors, fetch, knobs=knobs, tombstones=tombstones)
    if factor:
        return rerank(vectors, ids, stored, k)
    return scores, ids


# A filter allowing at most this many ids is scored exactly from the stored vectors (cheaper
# than a graph or inverted-list walk that skips almost every id, and always complete).
EXACT_FILTERED = 2048
# A flat index (flat, flat-fp16: codes in add order behind an IDMap, as exact as the stored
# fp16 vectors) scores a filter allowing at most this many ids from its own codes, decoded
# at the ids' positions: the work grows with the allowed ids, not with the index (a
# selector scans every code), and nothing is read from SQLite.
DECODED_FILTERED = 65536
DECODE_CHUNK = 8192  # codes decoded at a time (8192 x 384 fp32: 12 MiB)


def _empty(n: int) -> tuple[np.ndarray, np.ndarray]:
    empty = np.zeros((n, 0))
    return empty.astype(np.float32), empty.astype(np.int64)


def _filtered_top_k(
    index: Any,
    spec: IndexSpec,
    vectors: np.ndarray,
    k: int,
    stored: Callable[[list[int]], np.ndarray],
    knobs: SearchKnobs,
    allowed: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    allowed = np.unique(np.asarray(allowed, dtype=np.int64))
    if not len(allowed):
        return _empty(len(vectors))
    k = max(1, min(k, len(allowed)))
    if len(allowed) <= DECODED_FILTERED:
        decoded = decoded_top_k(index, vectors, allowed, k)
        if decoded is not None:
            return decoded
    if len(allowed) <= EXACT_FILTERED or _is_gpu(index):
        return exact_top_k(vectors, allowed, stored, k)
    factor = int(spec.params.get("rerank", 0))
    fetch = min(len(allowed), k * factor) if factor else k
    scores, ids = search(index, spec, vectors, fetch, knobs=knobs, allowed=allowed)
    if factor:
        scores, ids = rerank(vectors, ids, stored, k)
    short = np.flatnonzero((ids >= 0).sum(axis=1) < k)
    if len(short):
        exact_scores, exact_ids = exact_top_k(vectors[short], allowed, stored, k)
        scores, ids = scores.copy(), ids.copy()
        scores[short], ids[short] = exact_scores, exact_ids
    return scores, ids


def decoded_top_k(
    index: Any, queries: np.ndarray, ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Top-``k`` of the sorted ``ids`` scored on a flat index's own codes (fp32 or fp16:
    the stored vectors' values); None when the index is not such codes behind an IDMap or
    does not hold every id."""
    if not isinstance(index, faiss.IndexIDMap):
        return None
    inner = faiss.downcast_index(index.index)
    lossless = isinstance(inner, faiss.IndexFlat) or (
        isinstance(inner, faiss.IndexScalarQuantizer)
        and inner.sq.qtype == faiss.ScalarQuantizer.QT_fp16
    )
    if not lossless or not inner.ntotal:
        return None
    id_map = faiss.rev_swig_ptr(index.id_map.data(), index.id_map.size())
    positions = np.minimum(np.searchsorted(id_map, ids), len(id_map) - 1)
    if not np.array_equal(id_map[positions], ids):  # not in add order, or an id not held
        return None
    codes = faiss.rev_swig_ptr(inner.codes.data(), inner.codes.size()).reshape(inner.ntotal, -1)
    queries = np.asarray(queries, dtype=np.float32)
    exact = np.empty((len(queries), len(ids)), dtype=np.float32)
    for start in range(0, len(ids), DECODE_CHUNK):
        part = positions[start : start + DECODE_CHUNK]
        exact[:, start : start + len(part)] = queries @ inner.sa_decode(codes[part]).T
    return best_of(exact, ids, k)


def exact_top_k(
    queries: np.ndarray, ids: np.ndarray, stored: Callable[[list[int]], np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of ``ids`` by exact inner product with their ``stored`` vectors."""
    if not len(ids):
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        return scores, np.full((len(queries), k), -1, dtype=np.int64)
    exact = np.asarray(queries, dtype=np.float32) @ stored([int(i) for i in ids]).T
    return best_of(exact, np.asarray(ids), k)


def best_of(exact: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's top ``k`` of ``exact`` (queries x ``ids`` scores), padded with id -1; ties
    keep the order of ``ids``."""
    scores = np.full((len(exact), k), -np.inf, dtype=np.float32)
    best = np.full((len(exact), k), -1, dtype=np.int64)
    taken = min(k, len(ids))
    if len(ids) > k:  # the k best first (linear), then only they are sorted
        top = np.sort(np.argpartition(-exact, k - 1, axis=1)[:, :k], axis=1)
        within = np.argsort(-np.take_along_axis(exact, top, axis=1), axis=1, kind="stable")
        order = np.take_along_axis(top, within, axis=1)
    else:
        order = np.argsort(-exact, axis=1, kind="stable")
    scores[:, :taken] = np.take_along_axis(exact, order, axis=1)
    best[:, :taken] = ids[order]
    return scores, best


def rerank(
    queries: np.ndarray, ids: np.ndarray, stored: Callable[[list[int]], np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact scores for candidate ``ids`` (-1: none) from the ``stored`` vectors; the top ``k``."""
    wanted = sorted({int(i) for i in ids.ravel() if i >= 0})
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best = np.full((len(queries), k), -1, dtype=np.int64)
    if not wanted:
        return scores, best
    position = {doc: row for row, doc in enumerate(wanted)}
    vectors = stored(wanted)
    for q, (query, row) in enumerate(zip(queries, ids, strict=True)):
        candidates = [int(i) for i in row if i >= 0]
        exact = vectors[[position[c] for c in candidates]] @ np.asarray(query, dtype=np.float32)
        order = np.argsort(-exact)[:k]
        scores[q, : len(order)] = exact[order]
        best[q, : len(order)] = np.asarray(candidates, dtype=np.int64)[order]
    return scores, best


def _search_params(spec: IndexSpec, knobs: SearchKnobs) -> faiss.SearchParameters:
    if spec.is_hnsw:
        params = faiss.SearchParametersHNSW()
        params.efSearch = int(knobs.ef_search or spec.params.get("ef_search", DEFAULT_EF_SEARCH))
        return params
    if spec.is_ivf:
        params = faiss.SearchParametersIVF()
        params.nprobe = int(knobs.nprobe or spec.params.get("nprobe", 1))
        return params
    return faiss.SearchParameters()


# ------------------------------------------------------------------ snapshots
def write(index: faiss.Index, path: Path) -> None:
    faiss.write_index(index, str(path))


def read(path: Path, *, mmap: bool) -> faiss.Index:
    """Read a snapshot; ``mmap`` maps it read-only instead of copying (readers, not the writer).

    ``IO_FLAG_MMAP_IFC`` maps flat codes and HNSW storage in place; IVF inverted
    lists map with ``IO_FLAG_MMAP``.
    """
    if not mmap:
        return faiss.read_index(str(path))
    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)


def deserialize(data: bytes) -> faiss.Index:
    """A snapshot from bytes already in memory (read and verified by the caller)."""
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


def iter_chunks(
    rows: Iterable[tuple[int, bytes]], dtype: np.dtype, dim: int, size: int = 65536
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(ids, fp32 vectors)`` chunks from ``(id, blob)`` rows, ``size`` at a time."""
    ids: list[int] = []
    blobs: list[bytes] = []
    for doc_id, blob in rows:
        ids.append(doc_id)
        blobs.append(blob)
        if len(ids) >= size:
            yield _chunk(ids, blobs, dtype, dim)
            ids, blobs = [], []
    if ids:
        yield _chunk(ids, blobs, dtype, dim)


def _chunk(ids, blobs, dtype, dim) -> tuple[np.ndarray, np.ndarray]:
    vectors = np.frombuffer(b"".join(blobs), dtype=dtype).reshape(len(ids), dim)
    return np.asarray(ids, dtype=np.int64), vectors.astype(np.float32)


# ----------------------------------------------------------------------- GPU
def gpu_count() -> int:
    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


def to_gpus(
    index: faiss.Index, spec: IndexSpec, tombstones: np.ndarray | None = None
) -> faiss.Index | GpuGraph | None:
    """The index on all GPUs: flat and IVF sharded in fp16; HNSW as CAGRA where faiss has cuVS.

    None when this build or type has no GPU path (the CPU index answers then).
    """
    if gpu_count() == 0:
        return None
    if spec.is_hnsw:
        return GpuGraph.build(index, spec, tombstones) if hasattr(faiss, "GpuIndexCagra") else None
    if not (spec.is_ivf or spec.factory in ("Flat", "SQfp16")):
        return None
    options = faiss.GpuMultipleClonerOptions()
    options.shard = True
    options.useFloat16 = True
    options.common_ivf_quantizer = True
    try:
        return faiss.index_cpu_to_all_gpus(index, co=options)
    except RuntimeError:  # a type this faiss build cannot clone: the CPU index answers
        return None


class GpuGraph:
    """A CAGRA graph on the first GPU over the live vectors of an HNSW index, ids mapped back."""

    def __init__(self, cagra, ids: np.ndarray) -> None:
        self.cagra = cagra
        self.ids = ids
        self.ntotal = len(ids)

    @classmethod
    def build(cls, index: faiss.Index, spec: IndexSpec, tombstones: np.ndarray | None) -> GpuGraph:
        ids = index_ids(index)
        vectors = index.index.reconstruct_n(0, index.ntotal)
        if tombstones is not None and len(tombstones):
            live = ~np.isin(ids, tombstones)
            ids, vectors = ids[live], vectors[live]
        cagra = faiss.GpuIndexCagra(
            faiss.StandardGpuResources(),
            spec.dim,
            faiss.METRIC_INNER_PRODUCT,
            faiss.GpuIndexCagraConfig(),
        )
        cagra.train(np.ascontiguousarray(vectors, dtype=np.float32))
        return cls(cagra, ids)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, positions = self.cagra.search(queries, k)
        return scores, np.where(positions >= 0, self.ids[np.maximum(positions, 0)], -1)


def _is_gpu(index) -> bool:
    return (
        isinstance(index, GpuGraph)
        or "Gpu" in type(index).__name__
        or ("Shards" in type(index).__name__)
    )


def _apply_gpu_knobs(index, spec: IndexSpec, knobs: SearchKnobs) -> None:
    if spec.is_ivf and not isinstance(index, GpuGraph):
        faiss.GpuParameterSpace().set_index_parameter(
            index, "nprobe", int(knobs.nprobe or spec.params.get("nprobe", 1))
        )
