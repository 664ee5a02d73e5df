"""Incremental indexing: encode only what is new or changed, remove what is gone.

Documents are matched by (source, doc id) and compared by content hash. The
corpus is read as a stream and new vectors are committed in checkpoints, so a
killed run keeps what it finished, the next run picks up the rest (a first run is
published at its first checkpoint, see :class:`indexer.store.Writer`), and memory
does not grow with the corpus beyond the store's own keys.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.distributed import rank_and_world
from engine.encoder import Encoder
from engine.errors import EngineError
from indexer.distributed import encode_across_ranks
from indexer.documents import Document
from indexer.store import Writer, index_settings, reporting_damage


def _positive_int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise EngineError(f"{name} must be a positive whole number, not {raw!r}")
    return value


# A killed run loses at most this much work.
CHECKPOINT_SECONDS = 30.0
# Documents tokenized and encoded together: memory holds one chunk of text, not the corpus.
STREAM_DOCUMENTS = 4096


@dataclass
class IndexReport:
    """What one indexing run did."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    duplicates: int = 0
    encoded_tokens: int = 0
    seconds: float = 0.0
    total: int = 0
    ranks: int = 1
    kept_sources: list[str] = field(default_factory=list)
    index: str = ""  # the FAISS index type and parameters after the run

    @property
    def encoded(self) -> int:
        return self.added + self.updated

    def to_dict(self) -> dict:
        return {
            "added": self.added,
            "updated": self.updated,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "duplicates": self.duplicates,
            "encoded": self.encoded,
            "encoded_tokens": self.encoded_tokens,
            "documents": self.total,
            "seconds": round(self.seconds, 3),
            "docs_per_second": round(self.encoded / self.seconds, 2) if self.seconds else None,
            "ranks": self.ranks,
            "index_type": self.index,
        }


def update_index(
    index_dir: str | Path,
    encoder: Encoder,
    documents: Iterable[Document],
    *,
    rebuild: bool = False,
    default_instruction: str | None = None,
    keep_sources: Collection[str] = (),
    index_type: str | None = None,
    progress: bool = True,
) -> IndexReport:
    """Bring the index in ``index_dir`` in line with ``documents``.

    ``documents`` is consumed as a stream: new and changed documents are tokenized,
    encoded and committed ``STREAM_DOCUMENTS`` at a time, so memory holds one chunk
    of text, not the corpus. ``keep_sources`` names sources that could not be read
    this time (looked at after the stream ends, so a reader may fill it as it goes):
    their previously indexed documents are kept rather than deleted. ``index_type``
    (None: keep the index's) switches the FAISS index type, re-using stored vectors.
    """
    started = time.perf_counter()
    report = IndexReport(ranks=rank_and_world()[1])
    settings = index_settings(encoder.describe(), default_instruction, index_type)
    with reporting_damage(index_dir), Writer(index_dir, settings, rebuild=rebuild) as store:
        if default_instruction is not None:
            store.write_settings({"default_instruction": default_instruction})
        store.load_faiss()
        existing = store.existing()
        seen: set[tuple[str, str]] = set()
        pending: list[tuple[Document, int | None]] = []
        for doc in documents:
            key = (doc.source, doc.doc_id)
            if key in seen:
                report.duplicates += 1
                continue
            seen.add(key)
            stored = existing.get(key)
            if stored is not None and stored.content_hash == doc.content_hash:
                report.unchanged += 1
                continue
            pending.append((doc, stored.id if stored else None))
            if len(pending) >= STREAM_DOCUMENTS:
                report.encoded_tokens += _encode_and_commit(
                    store, encoder, pending, progress, report
                )
                pending = []
        report.encoded_tokens += _encode_and_commit(store, encoder, pending, progress, report)
        kept = set(keep_sources)
        removed = [s.id for key, s in existing.items() if key not in seen and key[0] not in kept]
        report.kept_sources = sorted({k[0] for k in existing if k not in seen and k[0] in kept})
        store.commit(remove=removed)
        report.removed = len(removed)
        report.total = store.count()
        store.refresh_index()  # publish would: the spec the snapshot is built as
        report.index = store.spec.describe()
    report.seconds = time.perf_counter() - started
    return report


def _encode_and_commit(
    store, encoder: Encoder, pending, progress: bool, report: IndexReport
) -> int:
    """Encode pending documents and commit them in checkpoints; returns tokens encoded.

    Under a launcher (``torchrun``) the ranks share the encoding and this
    process, rank 0, stays the one writer (:mod:`indexer.distributed`).
    """
    if not pending:
        return 0
    texts = [encoder.format_document(doc.title, doc.text) for doc, _ in pending]
    ids = encoder.tokenize(texts)
    del texts
    checkpoint_documents = _positive_int_env("ENGINE_CHECKPOINT_DOCUMENTS", 512)
    if rank_and_world()[1] > 1:
        chunks = encode_across_ranks(encoder, ids, checkpoint_documents, progress=progress)
    else:
        chunks = _checkpoints(encoder, ids, checkpoint_documents, progress)
    tokens = 0
    for positions, vectors in chunks:
        rows = []
        for position in positions:
            doc, stored_id = pending[position]
            rows.append(
                {
                    "id": stored_id,
                    "doc_id": doc.doc_id,
                    "source": doc.source,
                    "title": doc.title,
                    "text": doc.text,
                    "content_hash": doc.content_hash,
                    "token_count": len(ids[position]),
                }
            )
            tokens += len(ids[position])
            if stored_id is None:
                report.added += 1
            else:
                report.updated += 1
        store.commit(upsert=rows, vectors=vectors)
    return tokens


def _checkpoints(
    encoder: Encoder, ids, checkpoint_documents: int, progress: bool
) -> Iterator[tuple[list[int], np.ndarray]]:
    """``(positions, vectors)`` per checkpoint: every ``checkpoint_documents`` or 30 seconds."""
    positions: list[int] = []
    vectors: list[np.ndarray] = []
    last_commit = time.perf_counter()
    for batch_positions, batch in encoder.iter_encode(ids, progress=progress, desc="indexing"):
        positions.extend(batch_positions)
        vectors.append(batch)
        if (
            len(positions) >= checkpoint_documents
            or time.perf_counter() - last_commit > CHECKPOINT_SECONDS
        ):
            yield positions, np.vstack(vectors)
            positions, vectors = [], []
            last_commit = time.perf_counter()
    if positions:
        yield positions, np.vstack(vectors)
