"""Incremental indexing: encode only what is new or changed, remove what is gone.

Documents are matched by (source, doc id) and compared by content hash. The
corpus is read as a stream and new vectors are committed in checkpoints, so a
killed run keeps what it finished, the next run picks up the rest (a first run is
published at its first checkpoint, see :class:`indexer.store.Writer`), and memory
does not grow with the corpus beyond the store's own keys.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Collection, Iterable, Iterator, Sized
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.encoder import Encoder
from engine.errors import EngineError
from engine.progress import progress_bar, progress_enabled
from indexer.distributed import IndexingGroup, encode_across_ranks
from indexer.documents import CorpusScan, Document
from indexer.folder import reporting_damage
from indexer.passages import PassageSpec, split_passages
from indexer.schema import new_index_settings
from indexer.store import Writer, metadata_digest, read_index_settings


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
    metadata_updated: int = 0  # unchanged text, new metadata (not re-encoded)
    duplicates: int = 0
    encoded_tokens: int = 0
    passages: int = 0  # passages encoded (an index of passages)
    seconds: float = 0.0
    total: int = 0
    ranks: int = 1
    kept_sources: list[str] = field(default_factory=list)
    index_type: str = ""  # the FAISS index type and parameters after the run

    @property
    def encoded(self) -> int:
        return self.added + self.updated

    def to_dict(self) -> dict:
        return {
            "added": self.added,
            "updated": self.updated,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "metadata_updated": self.metadata_updated,
            "duplicates": self.duplicates,
            "encoded": self.encoded,
            "encoded_tokens": self.encoded_tokens,
            "passages": self.passages,
            "documents": self.total,
            "seconds": round(self.seconds, 3),
            "docs_per_second": round(self.encoded / self.seconds, 2) if self.seconds else None,
            "ranks": self.ranks,
            "index_type": self.index_type,
        }


def model_for_index(
    index_dir: Path, model: str | None, max_length: int | None, *, rebuild: bool = False
) -> tuple[str | None, int | None]:
    """The model and max length to index ``index_dir`` with: an existing index keeps its own.

    An index already there (published, or recoverable) keeps the model it was built
    with unless ``model`` names one or ``rebuild`` starts over, and its length unless
    ``max_length`` is given. None: the encoder's defaults.
    """
    if model is None and not rebuild:
        with reporting_damage(index_dir):
            stored = read_index_settings(index_dir)
        if stored is not None:
            return stored["model"], max_length or stored["max_length"]
    return model, max_length


def passages_for_index(
    index_dir: Path, asked: dict[str, int] | None, *, rebuild: bool = False
) -> dict[str, int] | None:
    """The passage setting to index ``index_dir`` with: the one asked for, else an existing
    index's own (a new index, or ``rebuild`` without one asked: none)."""
    if asked is not None or rebuild:
        return asked
    with reporting_damage(index_dir):
        stored = read_index_settings(index_dir)
    return stored.get("passages") if stored is not None else None


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
    passages: PassageSpec | None = None,
    group: IndexingGroup | None = None,
    remove_missing: bool = True,
) -> IndexReport:
    """Bring the index in ``index_dir`` in line with ``documents``.

    ``documents`` is consumed as a stream (a :class:`~indexer.documents.CorpusScan`
    reads files as it goes): new and changed documents are tokenized, encoded and
    committed ``STREAM_DOCUMENTS`` at a time (under ``torchrun``: one round of
    ``ENGINE_CHECKPOINT_DOCUMENTS`` per rank at a time), so memory holds a chunk of
    text, not the corpus; what is kept for the whole run is the (source, id) -> hash
    map of the index and the keys seen, for the diff. ``keep_sources`` names sources
    that could not be read this time (looked at after the stream ends, so a reader may
    fill it as it goes): their previously indexed documents are kept rather than
    deleted. ``index_type`` (None: keep the index's) switches the FAISS index type,
    re-using stored vectors. ``passages``: split documents into windows (the setting is
    stored with the index; another one needs ``rebuild``), a document's passages
    committed together, the text streamed through the windows. ``group`` (the ranks of
    a ``torchrun`` launch, entered on every rank) spreads the encoding over its ranks;
    None encodes in this process. ``remove_missing`` False adds and updates only (the
    Python API's ``upsert``): indexed documents missing from ``documents`` are kept.
    """
    started = time.perf_counter()
    checkpoint_documents = _positive_int_env("ENGINE_CHECKPOINT_DOCUMENTS", 512)
    world = group.world if group is not None else 1
    report = IndexReport(ranks=world)
    if passages is not None:
        passages.check(encoder.max_length)
        if not getattr(encoder.tokenizer, "is_fast", False):
            raise EngineError(
                f"--passages needs a fast tokenizer (offsets); {encoder.name} has none"
            )
    settings = new_index_settings(
        encoder.describe(),
        default_instruction,
        index_type,
        passages.to_settings() if passages is not None else None,
    )
    with reporting_damage(index_dir), Writer(index_dir, settings, rebuild=rebuild) as store:
        if default_instruction is not None:
            store.write_settings({"default_instruction": default_instruction})
        store.load_faiss()
        existing = store.existing()
        seen: set[tuple[str, str]] = set()
        new_metadata: list[tuple[int, str]] = []
        desc = f"indexing on {world} ranks" if world > 1 else "indexing"
        with RunProgress(documents, desc, enabled=progress) as bar:
            pending = _pending(documents, existing, seen, report, bar, new_metadata)
            if passages is not None:
                split = _passage_chunks(encoder, pending, passages, checkpoint_documents * world)
                if world > 1:
                    encoded = _passages_across_ranks(group, encoder, split, bar)
                else:
                    encoded = (_encode_passages(encoder, c, ids, bar) for c, ids in split)
            elif world > 1:
                rounds = _tokenized(encoder, _chunks(pending, checkpoint_documents * world))
                encoded = encode_across_ranks(group, encoder, rounds)
            else:
                chunks = _tokenized(encoder, _chunks(pending, STREAM_DOCUMENTS))
                encoded = _checkpoints(encoder, chunks, checkpoint_documents, bar)
            for chunk, ids, positions, vectors in encoded:
                _commit(store, chunk, ids, positions, vectors, report)
                if world > 1 and passages is None:  # passages count their own progress
                    bar.encoded(len(positions), sum(len(ids[p]) for p in positions))
                del chunk, ids, positions, vectors  # not held while the next is encoded
        kept = set(keep_sources)
        removed = [
            s.id
            for key, s in existing.items()
            if remove_missing and key not in seen and key[0] not in kept
        ]
        report.kept_sources = sorted({k[0] for k in existing if k not in seen and k[0] in kept})
        store.commit(remove=removed)
        store.update_metadata(new_metadata)
        report.metadata_updated = len(new_metadata)
        report.removed = len(removed)
        report.total = store.count()
        store.refresh_index()  # publish would: the spec the snapshot is built as
        report.index_type = store.spec.describe()
    report.seconds = time.perf_counter() - started
    return report


Pending = list[tuple[Document, int | None]]  # documents to encode, with their stored id


def metadata_json(doc: Document) -> str:
    """A document's metadata as stored (and compared with what is stored)."""
    return json.dumps(doc.metadata)


def _pending(
    documents: Iterable[Document],
    existing: dict,
    seen: set[tuple[str, str]],
    report: IndexReport,
    bar: RunProgress,
    new_metadata: list[tuple[int, str]],
) -> Iterator[tuple[Document, int | None]]:
    """New and changed documents, with their stored id (None: new); unchanged ones are
    counted, and those whose metadata changed alone go to ``new_metadata``."""
    for doc in documents:
        key = (doc.source, doc.doc_id)
        if key in seen:
            report.duplicates += 1
            bar.read(pending=False)
            continue
        seen.add(key)
        stored = existing.get(key)
        if stored is not None and stored.content_hash == doc.content_hash:
            metadata = metadata_json(doc)
            if metadata_digest(metadata) != stored.metadata_digest:
                new_metadata.append((stored.id, metadata))
            report.unchanged += 1
            bar.read(pending=False)
            continue
        bar.read(pending=True)
        yield doc, stored.id if stored else None


def _chunks(pending: Iterator[tuple[Document, int | None]], size: int) -> Iterator[Pending]:
    chunk: Pending = []
    for item in pending:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _tokenized(encoder: Encoder, chunks: Iterable[Pending]) -> Iterator[tuple[Pending, list]]:
    """Each chunk with the token ids of its documents, tokenized when the chunk is reached."""
    for chunk in chunks:
        yield chunk, encoder.tokenize([encoder.format_document(d.title, d.text) for d, _ in chunk])


def _commit(store, chunk: Pending, ids, positions, vectors, report: IndexReport) -> None:
    """One checkpoint: the documents at ``positions`` of ``chunk`` with their vectors.

    For passages, ``ids[position]`` is the list of a document's passages' token ids and
    ``chunk[position]`` carries its passages: all of them go in this one commit.
    """
    rows = []
    for position in positions:
        doc, stored_id, *split = chunk[position]
        tokens = sum(map(len, ids[position])) if split else len(ids[position])
        row = {
            "id": stored_id,
            "doc_id": doc.doc_id,
            "source": doc.source,
            "title": doc.title,
            # A passage index keeps the first passage as the document's text (a file may be
            # far too large to store; its passages hold it all).
            "text": split[0][0].text if split else doc.text,
            "content_hash": doc.content_hash,
            "token_count": tokens,
            "metadata": metadata_json(doc),
        }
        if split:
            row["passages"] = [{**p.offsets(), "text": p.text} for p in split[0]]
            report.passages += len(split[0])
        rows.append(row)
        report.encoded_tokens += tokens
        if stored_id is None:
            report.added += 1
        else:
            report.updated += 1
    store.commit(upsert=rows, vectors=vectors)


def _checkpoints(
    encoder: Encoder,
    chunks: Iterable[tuple[Pending, list]],
    checkpoint_documents: int,
    bar: RunProgress,
) -> Iterator[tuple[Pending, list, list[int], np.ndarray]]:
    """``(chunk, ids, positions, vectors)`` per checkpoint: every ``checkpoint_documents``
    or 30 seconds. A chunk is encoded in token-budget batches of similar lengths."""
    for chunk, ids in chunks:
        positions: list[int] = []
        vectors: list[np.ndarray] = []
        last_commit = time.perf_counter()
        for batch_positions, batch in encoder.iter_encode(ids):
            positions.extend(batch_positions)
            vectors.append(batch)
            bar.encoded(len(batch_positions), sum(len(ids[p]) for p in batch_positions))
            if (
                len(positions) >= checkpoint_documents
                or time.perf_counter() - last_commit > CHECKPOINT_SECONDS
            ):
                yield chunk, ids, positions, np.vstack(vectors)
                positions, vectors = [], []
                last_commit = time.perf_counter()
        if positions:
            yield chunk, ids, positions, np.vstack(vectors)


def _passage_chunks(
    encoder: Encoder,
    pending: Iterator[tuple[Document, int | None]],
    spec: PassageSpec,
    checkpoint_passages: int,
) -> Iterator[tuple[list, list[list[list[int]]]]]:
    """Whole documents split into passages, ``(chunk, ids)`` once ``checkpoint_passages``
    passages (or one large document's) are held: ``chunk[i]`` is ``(document, stored id,
    passages)``, ``ids[i]`` its passages' token ids (``title text`` each). The passages of
    one document (at most ``spec.max_document_tokens`` tokens) are held until their commit."""
    chunk: list = []
    ids: list[list[list[int]]] = []
    held = 0
    for doc, stored_id in pending:
        title = _passage_title(encoder, doc.title, spec.tokens)
        window = spec.tokens - len(encoder.tokenize([encoder.format_document(title, "")])[0])
        window = max(window, spec.overlap + 1)
        split = list(
            split_passages(
                encoder.tokenizer, doc.stream(), window, spec.overlap, spec.max_document_tokens
            )
        )
        if not split:  # a title alone: one passage of the title
            split = list(split_passages(encoder.tokenizer, [doc.title], window, 0))
        texts = [encoder.format_document(title, p.text) for p in split]
        chunk.append((doc, stored_id, split))
        ids.append(encoder.tokenize(texts, max_length=spec.tokens))
        held += len(split)
        if held >= checkpoint_passages:
            yield chunk, ids
            chunk, ids, held = [], [], 0
    if chunk:
        yield chunk, ids


def _distinct_passages(ids: list) -> tuple[list[tuple[int, ...]], list[int]]:
    """The distinct passages of a chunk's documents, and for every passage (row after row)
    its slot among them: passages with the same token ids (repeated boilerplate, headers,
    log lines) are encoded once, the vectors are the same."""
    first: dict[tuple[int, ...], int] = {}
    slot = [
        first.setdefault(tuple(passage), len(first)) for document in ids for passage in document
    ]
    return list(first), slot


def _encode_passages(encoder: Encoder, chunk: list, ids: list, bar: RunProgress):
    """Encode every passage of ``chunk``'s documents: ``(chunk, ids, positions, vectors)`` as
    :func:`_commit` takes them, the vectors row after row."""
    distinct, slot = _distinct_passages(ids)
    encoded = np.zeros((len(distinct), encoder.dim), dtype=np.float32)
    for positions, batch in encoder.iter_encode(distinct):
        encoded[positions] = batch
        bar.encoded(0, sum(len(distinct[p]) for p in positions))
    bar.encoded(len(chunk), 0)
    return chunk, ids, list(range(len(chunk))), encoded[slot]


def _passages_across_ranks(group: IndexingGroup, encoder: Encoder, chunks, bar: RunProgress):
    """:func:`_encode_passages` under ``torchrun``: each round's distinct passages are dealt
    to the ranks by tokens (:func:`encode_across_ranks`), a document's passages committed
    together by the writer as in one process."""

    def rounds():
        for chunk, ids in chunks:
            distinct, slot = _distinct_passages(ids)
            yield (chunk, ids, slot), distinct

    for (chunk, ids, slot), distinct, positions, vectors in encode_across_ranks(
        group, encoder, rounds()
    ):
        ordered = np.zeros_like(vectors)
        ordered[positions] = vectors  # gathered in the ranks' order
        bar.encoded(len(chunk), sum(map(len, distinct)))
        yield chunk, ids, list(range(len(chunk))), ordered[slot]


def _passage_title(encoder: Encoder, title: str, tokens: int) -> str:
    """The title repeated at the head of each passage, cut to a quarter of a passage."""
    if not title:
        return title
    encoded = encoder.tokenizer(title, add_special_tokens=False, return_offsets_mapping=True)[
        "offset_mapping"
    ]
    limit = tokens // 4
    return title if len(encoded) <= limit else title[: encoded[limit - 1][1]]


class RunProgress:
    """One progress bar for a whole run, over the corpus bytes when the documents come
    from a :class:`CorpusScan` (its total from a walk that reads nothing), else over
    documents (a total when ``documents`` has a length).

    The bar follows the reader, but documents read and not yet encoded hold it back:
    as they are encoded it moves toward the reader's position in proportion.
    """

    def __init__(self, documents: Iterable[Document], desc: str, *, enabled: bool) -> None:
        self.scan = documents if isinstance(documents, CorpusScan) else None
        self.bar = None
        if progress_enabled(enabled):
            if self.scan is not None:
                self.bar = progress_bar(self.scan.size(), desc, enabled=True, unit="B")
            else:
                total = len(documents) if isinstance(documents, Sized) else None
                self.bar = progress_bar(total, desc, enabled=True)
        self.documents = 0  # read so far
        self.position = 0.0  # the reader's position: bytes or documents
        self.done = 0.0  # where the bar stands
        self.waiting = 0  # documents read, not yet encoded
        self.tokens = 0
        self.started = time.perf_counter()

    def __enter__(self) -> RunProgress:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.bar is not None:
            self.bar.close()

    def read(self, *, pending: bool) -> None:
        self.documents += 1
        self.position = self.scan.bytes_read if self.scan is not None else self.documents
        if pending:
            self.waiting += 1
        elif not self.waiting:
            self._show(self.position)

    def encoded(self, count: int, tokens: int) -> None:
        self.tokens += tokens
        share = min(count / self.waiting, 1.0) if self.waiting else 1.0
        self.waiting = max(self.waiting - count, 0)
        self._show(self.done + (self.position - self.done) * share)

    def _show(self, done: float) -> None:
        self.done = done
        if self.bar is None:
            return
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        self.bar.set_postfix_str(
            f"{self.documents:,} docs, {self.tokens / elapsed:,.0f} tok/s", refresh=False
        )
        self.bar.update(int(done) - self.bar.n)
