"""The lexical index: BM25 over each document's ``title text``, beside the vector index.

In an index of passages (``engine index --passages``) it holds the passages instead, each
as ``title passage``, keyed by the passage ids (the vector ids): search then ranks
documents by their best passage on both sides (:func:`indexer.search.passage_hits`).
BM25 over whole files would score a 40-page PDF against a 100-word note with one length
normalisation and would need the whole text, which an index of passages stores only
passage by passage.

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

Damage: a segment's files never change once written (a new delete set is a new
``.del`` file), so each lexical commit records the SHA-256 of every file of the
segments it published (:func:`segment_digests`, new files only) with its generation;
``engine check`` re-hashes them, and ``--repair`` rebuilds the index from SQLite.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.errors import EngineError
from indexer.folder import WriterLock, warn

if TYPE_CHECKING:
    from indexer.store import Store

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

    def __init__(self, path: Path | None, index, schema, analyzer) -> None:
        self.path = path
        self._index = index
        self._schema = schema
        self._analyzer = analyzer
        self._writer = None
        self._searcher = None

    @classmethod
    def in_memory(cls) -> LexicalIndex:
        """A new empty index held in memory (a reader that must not write builds one)."""
        tantivy = _tantivy()
        schema, analyzer = make_schema(), make_analyzer()
        index = tantivy.Index(schema)
        index.register_tokenizer(ANALYZER_NAME, analyzer)
        return cls(None, index, schema, analyzer)

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
            # Searches see the commit that was current at open (or at refresh()), like a
            # store holding a read snapshot: a running writer's later commits stay unseen.
            index.config_reader(reload_policy="Manual")
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

    def release_writer(self) -> None:
        """Let background segment merges finish and give up tantivy's writer lock (a killed
        process just leaves merges undone); searches go on."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.wait_merging_threads()
            self.refresh()

    def close(self) -> None:
        self.release_writer()
        self._searcher = None

    def disk_bytes(self) -> int:
        if self.path is None:
            return 0
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())


def fill(lexical: LexicalIndex, rows: Iterable[tuple[int, str, str]]) -> LexicalIndex:
    """Add (id, title, text) rows, streamed in chunks, and commit (even none: an empty index)."""
    batch: list[tuple[int, str, str]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= CHUNK:
            lexical.add([r[0] for r in batch], [document_text(r[1], r[2]) for r in batch])
            batch = []
    if batch:
        lexical.add([r[0] for r in batch], [document_text(r[1], r[2]) for r in batch])
    lexical._open_writer()
    lexical.commit()
    return lexical


def build(path: str | Path, rows: Iterable[tuple[int, str, str]]) -> LexicalIndex:
    """A new index at ``path`` from (id, title, text) rows, replacing any there.

    Built in a sibling folder and renamed into place, so a killed build leaves either the
    old index or none (rebuilt again when next needed), never a half-built one.
    """
    path = Path(path)
    staging = path.with_name(f"{path.name}.building-{uuid.uuid4().hex[:8]}")
    fill(LexicalIndex.open(staging, create=True), rows).close()
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


def published_segments(path: Path) -> set[str]:
    """The ids of the segments ``path``'s meta.json publishes, as their files are named."""
    meta = json.loads((path / "meta.json").read_text())
    return {str(s["segment_id"]).replace("-", "") for s in meta.get("segments", [])}


def segment_files(path: Path) -> list[Path]:
    """The files of the published segments (immutable once written)."""
    segments = published_segments(path)
    return sorted(f for f in path.iterdir() if f.name.split(".", 1)[0] in segments)


def segment_digests(path: Path, known: dict[str, str]) -> dict[str, str]:
    """SHA-256 of each published segment file; a file already in ``known`` (recorded when
    it was new: segment files never change) is not read again."""
    digests = {}
    for file in segment_files(path):
        digests[file.name] = known.get(file.name) or _sha256(file)
    return digests


def damaged_files(path: Path, recorded: dict[str, str]) -> list[str]:
    """Published segment files whose content differs from its recorded digest, or that are
    gone. Files published after the record (a writer killed between the two) go unchecked."""
    segments = published_segments(path)
    wrong = []
    for name, digest in sorted(recorded.items()):
        file = path / name
        if name.split(".", 1)[0] not in segments:
            continue
        if not file.is_file():
            wrong.append(f"{name} is missing")
        elif _sha256(file) != digest:
            wrong.append(f"{name} does not match its recorded checksum")
    return wrong


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _first_line(exc: BaseException, limit: int = 160) -> str:
    """An exception's first line, cut to ``limit`` characters (tantivy quotes file contents)."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"


# ------------------------------------------------------------ with the store
# The settings key of the last lexical commit: {"generation", "documents", "keys"}; "keys"
# says what the lexical ids are (KEYS_DOCUMENTS, or KEYS_PASSAGES in an index of passages).
LEXICAL_KEY = "lexical"
KEYS_DOCUMENTS = "documents"
KEYS_PASSAGES = "passages"
# (id, title, text) of what the lexical index holds, by its keys.
ROWS_SQL = {
    KEYS_DOCUMENTS: "SELECT id, title, text FROM documents",
    KEYS_PASSAGES: "SELECT p.id AS id, d.title AS title, p.text AS text "
    "FROM passages p JOIN documents d ON d.id = p.document",
}
ID_COLUMN = {KEYS_DOCUMENTS: "id", KEYS_PASSAGES: "p.id"}


class LexicalSide:
    """The lexical index of one store database, kept in step with it.

    ``index-<token>.lexical/`` beside ``index-<token>.db``. The writer applies each
    SQLite commit to it right after the transaction and records the generation it
    reached; whoever opens it finds it in step, or behind (a writer killed between the
    two commits: caught up by id difference), or missing (an index made before the
    lexical side existed, or a lost folder: rebuilt from SQLite), or unreadable
    (rebuilt, with a one-line warning). Catching up and rebuilding write, so a reader
    does them only under the folder's writer lock; while an ``engine index`` holds it,
    that writer keeps the index in step and readers search what is committed. A reader
    pinned to a read snapshot (`engine serve`) never writes (see :meth:`load`); the server
    brings the index in step before it pins one.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.index: LexicalIndex | None = None

    @property
    def keys(self) -> str:
        """What the lexical ids are: the documents', or in an index of passages the passages'."""
        return KEYS_PASSAGES if self.store.has_passages else KEYS_DOCUMENTS

    def _all_rows(self):
        """(id, title, text) of everything the lexical index should hold, by id, streamed."""
        return self.store.db.execute(f"{ROWS_SQL[self.keys]} ORDER BY {ID_COLUMN[self.keys]}")

    def _recorded_keys(self) -> str | None:
        """The keys of the last lexical commit recorded (an older record: documents)."""
        record = self.store.settings.get(LEXICAL_KEY)
        return record.get("keys", KEYS_DOCUMENTS) if isinstance(record, dict) else None

    @property
    def path(self) -> Path:
        return self.store.folder / f"{Path(self.store.db_name).stem}.lexical"

    def load(self) -> LexicalIndex:
        """The lexical index, in step with SQLite (see the class docstring)."""
        if self.index is not None:
            return self.index
        if self.store.writer:
            self.index = self._in_step()
            return self.index
        if self.store.db.conn.in_transaction:
            # A reader pinned to a read snapshot (engine serve) never writes: it would hold
            # the database's write lock until it closes. It searches the index as it is,
            # or, when there is none to search, one built in memory from its snapshot.
            self.index = self._as_it_is_or_in_memory()
            return self.index
        try:
            index = LexicalIndex.open(self.path)
        except LexicalError:
            index = None
        if index is not None and self.in_step(index):
            self.index = index  # the usual case: no lock taken, nothing written
            return index
        lock = WriterLock(self.store.folder)
        try:
            lock.acquire()
        except EngineError:  # a writer is running: it keeps the index in step
            if index is not None and self._recorded_keys() not in (None, self.keys):
                index.close()
                index = None  # ids of another kind: the writer is rebuilding it
            if index is None:
                raise EngineError(
                    f"the lexical index of {self.store.folder} is being built by a running "
                    "`engine index`; search with --mode dense until it finishes"
                ) from None
            self.index = index
            return index
        try:
            if index is not None:
                index.close()
            self.index = self._in_step()
            # A reader's catch-up must not keep tantivy's writer lock: `engine index` needs it.
            self.index.release_writer()
        finally:
            lock.release()
        return self.index

    def _as_it_is_or_in_memory(self) -> LexicalIndex:
        try:
            return LexicalIndex.open(self.path)
        except LexicalError as exc:
            if self.path.exists():
                warn(f"{exc}; searching one built in memory from the database")
        return fill(LexicalIndex.in_memory(), self._all_rows())

    def _in_step(self) -> LexicalIndex:
        try:
            index = LexicalIndex.open(self.path)
        except LexicalError as exc:
            if self.path.exists():
                warn(f"{exc}; rebuilt it from the database")
            return self.rebuild()
        if self._recorded_keys() not in (None, self.keys):
            # Ids of another kind (an index of passages whose lexical side held documents):
            # an id difference means nothing, so it is built afresh.
            index.close()
            return self.rebuild()
        if not self.in_step(index):
            catch_up(index, self._live_ids(), self.rows)
            self._record(index)
        return index

    def in_step(self, index: LexicalIndex) -> bool:
        """Whether the last lexical commit recorded is SQLite's generation (count and keys)."""
        record = self.store.settings.get(LEXICAL_KEY)
        return (
            isinstance(record, dict)
            and record.get("generation") == self.store.generation
            and record.get("keys", KEYS_DOCUMENTS) == self.keys
            and index.count() == self.store.vector_count()
        )

    def rebuild(self) -> LexicalIndex:
        """A fresh lexical index from every document (or passage) in SQLite, streamed, recorded."""
        if self.index is not None:
            self.index.close()
        self.index = build(self.path, self._all_rows())
        self._record(self.index)
        return self.index

    def apply_commit(
        self, gone: Sequence[int], new_ids: Sequence[int], texts: Sequence[str]
    ) -> None:
        """After a SQLite commit (the writer): remove the ids ``gone``, add ``new_ids`` with
        their ``texts`` (:func:`document_text`), commit, record."""
        if self.index is None:
            self.load()  # in step with SQLite, which already holds this commit
            return
        index = self.index
        if gone:
            index.remove(gone)
        if len(new_ids):
            index.add(new_ids, texts)
        index.commit()
        self._record(index)

    def search(
        self, queries: Sequence[str], k: int, allowed: Iterable[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` BM25 (scores, ids) per query as (n, k) arrays, empty slots id -1."""
        index = self.load()
        scores = np.zeros((len(queries), k), dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        wanted = None if allowed is None else list(allowed)
        for row, query in enumerate(queries):
            row_scores, row_ids = index.search(query, k, wanted)
            scores[row, : len(row_ids)] = row_scores
            ids[row, : len(row_ids)] = row_ids
        return scores, ids

    def problem(self) -> str | None:
        """What is wrong with the lexical index on disk, or None (`engine check`).

        "missing" is no damage: it is rebuilt from SQLite when first needed.
        """
        if not self.path.exists():
            return "missing"
        if self._recorded_keys() not in (None, self.keys):
            return f"holds {self._recorded_keys()}, the index searches {self.keys}"
        try:
            wrong = damaged_files(self.path, self._recorded_files())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            wrong = []  # meta.json unreadable: opening it, below, says how
        if wrong:
            more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
            return f"{wrong[0]}{more}"
        try:
            index = LexicalIndex.open(self.path)
        except LexicalError as exc:
            return str(exc).split(" is ", 1)[-1]
        try:
            held = index.ids()
            index.search("a probe query", 1)
        except (OSError, ValueError, RuntimeError) as exc:
            return f"unreadable ({_first_line(exc)})"
        finally:
            index.close()
        live = self._live_ids()
        if np.array_equal(held, live):
            return None
        extra = len(np.setdiff1d(held, live))
        lacking = len(np.setdiff1d(live, held))
        return (
            f"{len(held)} {self.keys}, the database has {len(live)} "
            f"({lacking} missing, {extra} no longer in the database)"
        )

    def close(self) -> None:
        if self.index is not None:
            self.index.close()
            self.index = None

    def rows(self, ids: Sequence[int]) -> list[tuple[int, str, str]]:
        """(id, title, text) of these documents (or passages), from SQLite."""
        out: list[tuple[int, str, str]] = []
        column = ID_COLUMN[self.keys]
        for start in range(0, len(ids), 500):
            part = [int(i) for i in ids[start : start + 500]]
            marks = ",".join("?" * len(part))
            out += self.store.db.execute(
                f"{ROWS_SQL[self.keys]} WHERE {column} IN ({marks}) ORDER BY {column}", part
            ).fetchall()
        return out

    def _live_ids(self) -> np.ndarray:
        table = "passages" if self.keys == KEYS_PASSAGES else "documents"
        rows = self.store.db.execute(f"SELECT id FROM {table} ORDER BY id")
        return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def _recorded_files(self) -> dict[str, str]:
        record = self.store.settings.get(LEXICAL_KEY)
        files = record.get("files") if isinstance(record, dict) else None
        return files if isinstance(files, dict) else {}

    def _record(self, index: LexicalIndex) -> None:
        self.store.write_settings(
            {
                LEXICAL_KEY: {
                    "generation": self.store.generation,
                    "documents": index.count(),
                    "keys": self.keys,
                    "files": segment_digests(self.path, self._recorded_files()),
                }
            }
        )
