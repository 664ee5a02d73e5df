"""The lexical index: BM25 over each document's ``title text``, beside the vector index.

Built on tantivy (a kept Rust search engine with Python bindings), chosen by measurement
over SQLite FTS5 and bm25s (``engine bench lexical``, bench/results/README.md): BM25 alone
within 0.01 nDCG@10 of Anserini's published figures on SciFact and NFCorpus, queries in
well under a millisecond (200-word ones in a few), a fraction of the text's size on disk,
and incremental adds and deletes on disk, which bm25s (rebuilt on every change) and FTS5
(seconds for a paragraph-long query) lack.

Documents are keyed by the store's ids (the FAISS ids), held in a fast field. Text is
analysed by one analyzer, the same for documents and queries: words split on
non-alphanumerics, longer than 40 bytes dropped, lowercased, English stopwords removed,
Snowball English stems. Term frequencies are indexed without positions (no phrase queries;
half the disk). BM25 is tantivy's (k1 = 1.2, b = 0.75).

A query is the OR of its terms, a term repeated in the query counting as often as it is
there (as in Lucene). ``allowed`` restricts a search to a set of ids inside the search
(a filter), so k hits come back whenever k allowed documents match.

Crash safety: changes are buffered and published by :meth:`LexicalIndex.commit` (tantivy
writes new segment files and then replaces its ``meta.json`` atomically), so a killed
writer leaves the last commit; the store commits SQLite first and the lexical index
after it, and a lexical index behind SQLite is caught up by id difference (ids are
never reused), see :func:`catch_up`.
"""

from __future__ import annotations

import shutil
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

ID_FIELD = "id"
BODY_FIELD = "body"
ANALYZER_NAME = "engine_english"
# Words longer than this many bytes (hashes, base64, URLs without spaces) are not indexed.
LONGEST_WORD = 40
# The writer's memory budget (tantivy needs at least 15 MB per thread); one thread: indexing
# shares the machine with the encoder, and the lexical side is a few percent of its time.
WRITER_HEAP_BYTES = 64_000_000
# Documents read from SQLite per step when rebuilding or catching up.
CHUNK = 4096


class LexicalError(Exception):
    """The lexical index on disk cannot be opened or read (rebuild it from SQLite)."""


def document_text(title: str, text: str) -> str:
    """What is indexed of a document: ``title text``, as the encoder sees it."""
    return f"{title} {text}".strip()


def _tantivy():
    import tantivy

    return tantivy


def make_analyzer():
    """The one analyzer of documents and queries (see the module docstring)."""
    tantivy = _tantivy()
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(LONGEST_WORD))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.stopword("english"))
        .filter(tantivy.Filter.stemmer("english"))
        .build()
    )


def make_schema():
    tantivy = _tantivy()
    builder = tantivy.SchemaBuilder()
    builder.add_unsigned_field(ID_FIELD, stored=False, indexed=True, fast=True)
    builder.add_text_field(BODY_FIELD, tokenizer_name=ANALYZER_NAME, index_option="freq")
    return builder.build()


class LexicalIndex:
    """One tantivy index folder: search it, and (holding the store's writer lock) change it."""

    def __init__(self, path: Path, index, schema, analyzer) -> None:
        self.path = path
        self._index = index
        self._schema = schema
        self._analyzer = analyzer
        self._writer = None
        self._searcher = None

    @classmethod
    def open(cls, path: str | Path, *, create: bool = False) -> LexicalIndex:
        """Open the index at ``path`` (``create``: a new empty one if there is none).

        Raises :class:`LexicalError` when the folder is missing (and not to be created)
        or is not a readable tantivy index.
        """
        tantivy = _tantivy()
        path = Path(path)
        exists = (path / "meta.json").is_file()
        if not exists and not create:
            raise LexicalError(f"no lexical index at {path}")
        schema = make_schema()
        analyzer = make_analyzer()
        try:
            path.mkdir(parents=True, exist_ok=True)
            index = tantivy.Index(schema, path=str(path), reuse=True)
            index.register_tokenizer(ANALYZER_NAME, analyzer)
            lexical = cls(path, index, schema, analyzer)
            lexical.count()  # reads meta.json and opens every segment
        except (OSError, ValueError, RuntimeError) as exc:
            raise LexicalError(
                f"lexical index at {path} is unreadable ({_first_line(exc)})"
            ) from None
        return lexical

    # ------------------------------------------------------------- reading
    def _current_searcher(self):
        if self._searcher is None:
            self._searcher = self._index.searcher()
        return self._searcher

    def count(self) -> int:
        """Documents in the last commit this handle has seen."""
        return int(self._current_searcher().num_docs)

    def refresh(self) -> None:
        """See the last commit (another process's, or after :meth:`commit`)."""
        self._index.reload()
        self._searcher = None

    def ids(self) -> np.ndarray:
        """Every document id in the index, sorted (for catching up with SQLite)."""
        searcher = self._current_searcher()
        total = int(searcher.num_docs)
        if total == 0:
            return np.zeros(0, dtype=np.int64)
        tantivy = _tantivy()
        hits = searcher.search(tantivy.Query.all_query(), total, count=False).hits
        values = searcher.fast_field_values(ID_FIELD, [address for _, address in hits])
        return np.sort(np.asarray(values, dtype=np.int64))

    def terms(self, query: str) -> list[str]:
        """The analysed terms of a query (stems, stopwords removed), in order, repeats kept."""
        return list(self._analyzer.analyze(query))

    def search(
        self, query: str, k: int, allowed: Iterable[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The top-``k`` (scores, ids) by BM25, best first; only ids in ``allowed`` when given.

        A query with no indexed term (empty, or stopwords only) has no hits.
        """
        tantivy = _tantivy()
        counts = Counter(self.terms(query))
        empty = np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
        if not counts or k <= 0:
            return empty
        Query, Occur = tantivy.Query, tantivy.Occur
        clauses = []
        for term, repeats in counts.items():
            clause = Query.term_query(self._schema, BODY_FIELD, term)
            if repeats > 1:
                clause = Query.boost_query(clause, float(repeats))
            clauses.append((Occur.Should, clause))
        query_object = Query.boolean_query(clauses)
        if allowed is not None:
            wanted = sorted({int(i) for i in allowed})
            if not wanted:
                return empty
            only = Query.const_score_query(
                Query.term_set_query(self._schema, ID_FIELD, wanted), 0.0
            )
            query_object = Query.boolean_query([(Occur.Must, query_object), (Occur.Must, only)])
        searcher = self._current_searcher()
        hits = searcher.search(query_object, int(k), count=False).hits
        if not hits:
            return empty
        ids = searcher.fast_field_values(ID_FIELD, [address for _, address in hits])
        scores = np.asarray([score for score, _ in hits], dtype=np.float32)
        return scores, np.asarray(ids, dtype=np.int64)

    # ------------------------------------------------------------- writing
    def _open_writer(self):
        if self._writer is None:
            try:
                self._writer = self._index.writer(heap_size=WRITER_HEAP_BYTES, num_threads=1)
            except ValueError as exc:
                raise LexicalError(
                    f"cannot write the lexical index at {self.path} ({_first_line(exc)})"
                ) from None
        return self._writer

    def add(self, ids: Sequence[int], texts: Sequence[str]) -> None:
        """Buffer documents for the next :meth:`commit`."""
        tantivy = _tantivy()
        writer = self._open_writer()
        for doc_id, text in zip(ids, texts, strict=True):
            document = tantivy.Document()
            document.add_unsigned(ID_FIELD, int(doc_id))
            document.add_text(BODY_FIELD, text)
            writer.add_document(document)

    def remove(self, ids: Iterable[int]) -> None:
        """Buffer deletions for the next :meth:`commit`."""
        wanted = sorted({int(i) for i in ids})
        if wanted:
            # By query: tantivy's delete-by-term reads a Python int as i64, which never
            # matches this u64 field.
            query = _tantivy().Query.term_set_query(self._schema, ID_FIELD, wanted)
            self._open_writer().delete_documents_by_query(query)

    def commit(self) -> None:
        """Publish what was buffered, atomically; searches of this handle see it."""
        if self._writer is None:
            return
        self._writer.commit()
        self.refresh()

    def close(self) -> None:
        """Let background segment merges finish (a killed process just leaves them undone)."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.wait_merging_threads()
        self._searcher = None

    def disk_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())


def build(path: str | Path, rows: Iterable[tuple[int, str, str]]) -> LexicalIndex:
    """A new index at ``path`` from (id, title, text) rows, replacing any there.

    Built in a sibling folder and renamed into place, so a killed build leaves either the
    old index or none (rebuilt again when next needed), never a half-built one.
    """
    path = Path(path)
    staging = path.with_name(f"{path.name}.building-{uuid.uuid4().hex[:8]}")
    lexical = LexicalIndex.open(staging, create=True)
    batch: list[tuple[int, str, str]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= CHUNK:
            lexical.add([r[0] for r in batch], [document_text(r[1], r[2]) for r in batch])
            batch = []
    if batch:
        lexical.add([r[0] for r in batch], [document_text(r[1], r[2]) for r in batch])
    if lexical._writer is None:
        lexical._open_writer()  # an empty corpus still gets a committed (empty) index
    lexical.commit()
    lexical.close()
    retired = path.with_name(f"{path.name}.retired-{uuid.uuid4().hex[:8]}")
    if path.exists():
        path.rename(retired)
    staging.rename(path)
    shutil.rmtree(retired, ignore_errors=True)
    return LexicalIndex.open(path)


def catch_up(
    lexical: LexicalIndex,
    live_ids: np.ndarray,
    rows_of: Callable[[list[int]], Sequence[tuple[int, str, str]]],
) -> tuple[int, int]:
    """Bring ``lexical`` in step with the store's ids: add what it lacks, drop what is gone.

    ``rows_of(ids)`` returns the (id, title, text) rows of those ids. Returns (added, removed).
    """
    held = lexical.ids()
    live = np.asarray(live_ids, dtype=np.int64)
    gone = np.setdiff1d(held, live)
    missing = np.setdiff1d(live, held)
    if len(gone):
        lexical.remove(gone.tolist())
    for start in range(0, len(missing), CHUNK):
        rows = rows_of(missing[start : start + CHUNK].tolist())
        lexical.add([r[0] for r in rows], [document_text(r[1], r[2]) for r in rows])
    if len(gone) or len(missing):
        lexical.commit()
    return len(missing), len(gone)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
