"""The persistent store: SQLite (documents, vectors, settings) plus a FAISS index.

Crash safety comes from one rule: SQLite is the source of truth and every change
is one SQLite transaction; the FAISS snapshot of it (:mod:`indexer.snapshots`) is
rebuilt or caught up when it is missing, stale or damaged. A first run publishes
its database after its first checkpoint (a killed first run resumes, searches
answer from what is committed); a ``--rebuild`` writes a new database next to the
old one and switches the ``CURRENT`` pointer (:mod:`indexer.folder`) only when it
is complete, so the old index answers until then. The schema and its migrations
are in :mod:`indexer.schema`, the FAISS side (index types, search knobs, GPUs) in
:mod:`indexer.vector_index`. A document whose text changes gets a new id (ids
are never reused), so an older snapshot can be caught up with SQLite by comparing ids.
In an index of passages (``engine index --passages``) the vectors and FAISS ids are
the passages' (a ``passages`` row names its document); a document's passages change
together, in the transaction that changes the document.
"""

from __future__ import annotations

import hashlib
import sqlite3
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import sqlite_utils

from engine.errors import EngineError
from indexer import vector_index
from indexer.filters import Condition
from indexer.folder import (
    POINTER,
    WriterLock,
    crash_point,
    interrupted_first_run,
    published_databases,
    read_pointer,
    rebuild_hint,
    recover_pointer,
    refuse_unknown_databases,
    remove_stale_files,
    repair_hint,
    reporting_damage,
    utc_now,
    write_pointer,
)
from indexer.lexical import LexicalSide, document_text
from indexer.schema import (
    QUICK_CHECK_MAX_BYTES,
    check_and_migrate,
    check_compatible,
    connect,
    migrate,
    put_settings,
    read_settings,
    stored_vector_dtype,
)
from indexer.snapshots import COMPACT_TOMBSTONES, Snapshots
from indexer.vector_index import IndexSpec, SearchKnobs

# The columns of a passage row that say where it lies in its document.
PASSAGE_FIELDS = ("position", "token_start", "token_end", "char_start", "char_end")


@dataclass(frozen=True)
class StoredDocument:
    id: int
    content_hash: str
    metadata_digest: bytes = b""  # of the metadata JSON: a change needs no re-encoding


def metadata_digest(metadata_json: str | None) -> bytes:
    """A short digest of a document's stored metadata JSON, to see it changed."""
    return hashlib.blake2b((metadata_json or "").encode(), digest_size=8).digest()


class Store:
    """One index folder: read it, search it, and (as the writer) change it."""

    def __init__(
        self, folder: Path, db_name: str, db: sqlite_utils.Database, *, writer: bool = False
    ) -> None:
        self.folder = folder
        self.db_name = db_name
        self.db = db
        # Readers map the snapshot read-only; the writer reads a copy it can change.
        self.writer = writer
        self.snapshots = Snapshots(self)
        # Set by create(publish_first_commit=True): see commit().
        self._publish_pending = False
        # The BM25 index beside this database (indexer.lexical), loaded when first needed.
        self.lexical = LexicalSide(self)

    # ------------------------------------------------------------- opening
    @classmethod
    def open(cls, folder: str | Path, *, quick_check: bool = True, writer: bool = False) -> Store:
        """Open an existing index; a one-line error naming the repair if it is missing or broken."""
        folder = Path(folder)
        pointer = folder / POINTER
        if not pointer.is_file():
            if published_databases(folder):
                raise EngineError(
                    f"index at {folder} has lost its {POINTER} pointer; {repair_hint(folder)}"
                )
            if interrupted_first_run(folder):
                raise EngineError(
                    f"the first `engine index` of {folder} was killed before it published; "
                    f"run `engine index CORPUS --index {folder}` again to resume it"
                )
            raise EngineError(f"no index at {folder} (run `engine index` first)")
        db_name = read_pointer(folder)
        if db_name is None:
            raise EngineError(
                f"index at {folder} is corrupt: unreadable {POINTER} file; {repair_hint(folder)}"
            )
        return cls.open_database(folder, db_name, quick_check=quick_check, writer=writer)

    @classmethod
    def open_database(
        cls, folder: Path, db_name: str, *, quick_check: bool = True, writer: bool = False
    ) -> Store:
        """Open one database of ``folder`` (current or not), checking what is cheap to check."""
        path = folder / db_name
        if not path.is_file():
            raise EngineError(
                f"index at {folder} is corrupt: {db_name} is missing; {repair_hint(folder)}"
            )
        if path.stat().st_size == 0:
            raise EngineError(
                f"index database at {folder} is empty (0 bytes); {rebuild_hint(folder)}"
            )
        with reporting_damage(folder):
            store = cls(folder, db_name, connect(path), writer=writer)
            try:
                check_and_migrate(
                    store.db,
                    folder,
                    quick_check=quick_check and path.stat().st_size <= QUICK_CHECK_MAX_BYTES,
                )
            except BaseException:
                store.close()
                raise
        return store

    @classmethod
    def create(
        cls, folder: str | Path, settings: dict[str, Any], *, publish_first_commit: bool = False
    ) -> Store:
        """A new, empty database in ``folder``; it becomes current only on :meth:`publish`,
        or with ``publish_first_commit`` at its first :meth:`commit` (a first run: searches
        answer from the first checkpoint on)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        db_name = f"index-{uuid.uuid4().hex[:12]}.db"
        store = cls(folder, db_name, connect(folder / db_name), writer=True)
        store._publish_pending = publish_first_commit
        migrate(store.db)
        now = utc_now()
        index_type = settings.get("index_type") or (settings.get("index") or {}).get("type")
        spec = vector_index.resolve(index_type or "auto", 0, int(settings["dim"]))
        store.write_settings(
            {
                **{k: v for k, v in settings.items() if k != "index_type"},
                **spec.to_settings(),
                "vector_dtype": "float16",
                "created": now,
                "updated": now,
                "generation": 0,
                # A kill before the first publish completes resumes from this database.
                **({"first_run": True} if publish_first_commit else {}),
            }
        )
        return store

    def publish(self) -> None:
        """Make this database the current one (atomic pointer swap) and drop the old files.

        The ``published`` setting is what pointer recovery trusts: only a database
        that was once current can take the pointer back.
        """
        crash_point("publish:start")
        self.refresh_index()
        self.snapshots.write()
        crash_point("publish:snapshot")
        self.lexical.load()  # in step (built on the first publish of an older index)
        self.write_settings({"published": utc_now()})
        crash_point("publish:settings")
        write_pointer(self.folder, self.db_name)
        crash_point("publish:pointer")
        remove_stale_files(
            self.folder, self.db_name, {self.snapshots.path().name, self.lexical.path.name}
        )

    @property
    def is_current(self) -> bool:
        return read_pointer(self.folder) == self.db_name

    def hold_read_snapshot(self) -> None:
        """Pin what this store reads to the database as it is now, until :meth:`close`: one
        read transaction (a WAL snapshot), so commits of a running writer stay invisible."""
        self.db.execute("BEGIN")

    def close(self) -> None:
        self.lexical.close()
        self.db.conn.close()

    # ------------------------------------------------------------ settings
    @property
    def settings(self) -> dict[str, Any]:
        return read_settings(self.db)

    def write_settings(self, values: dict[str, Any]) -> None:
        with self.db.atomic():
            put_settings(self.db, values)

    @property
    def generation(self) -> int:
        return int(self.settings.get("generation", 0))

    @property
    def spec(self) -> IndexSpec:
        """The FAISS index type and parameters stored with the index."""
        return IndexSpec.from_settings(self.settings)

    @property
    def vector_dtype(self) -> np.dtype:
        return stored_vector_dtype(self.settings)

    @property
    def has_passages(self) -> bool:
        """Whether the vectors are passages' (``engine index --passages``), not documents'."""
        return isinstance(self.settings.get("passages"), dict)

    # ----------------------------------------------------------- documents
    def count(self) -> int:
        return self.db.execute("SELECT count(*) FROM documents").fetchone()[0]

    def vector_count(self) -> int:
        """Vectors in the index: one a document, or one a passage."""
        table = "passages" if self.has_passages else "documents"
        return self.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]

    def existing(self) -> dict[tuple[str, str], StoredDocument]:
        """(source, doc id) -> stored id, content hash and metadata digest, for the
        incremental diff."""
        rows = self.db.execute("SELECT source, doc_id, id, content_hash, metadata FROM documents")
        return {(s, d): StoredDocument(i, h, metadata_digest(m)) for s, d, i, h, m in rows}

    def update_metadata(self, changes: Sequence[tuple[int, str]]) -> None:
        """New metadata JSON for documents whose text is unchanged (a touched file, a
        record's other fields), in one transaction; ``metadata_values`` follows by trigger."""
        if not changes:
            return
        now = utc_now()
        with self.db.atomic():
            self.db.conn.executemany(
                "UPDATE documents SET metadata = ?, updated = ? WHERE id = ?",
                [(metadata, now, int(i)) for i, metadata in changes],
            )

    def vector_keys(self) -> dict[int, tuple[str, str, str, str]]:
        """FAISS id -> (doc id, source, content hash, metadata JSON) of its document (or
        its passage's)."""
        if self.has_passages:
            rows = self.db.execute(
                "SELECT p.id, d.doc_id, d.source, d.content_hash, d.metadata FROM passages p "
                "JOIN documents d ON d.id = p.document"
            )
        else:
            rows = self.db.execute(
                "SELECT id, doc_id, source, content_hash, metadata FROM documents"
            )
        return {int(row[0]): tuple(row[1:]) for row in rows}

    def doc_ids(self) -> dict[int, str]:
        return dict(self.db.execute("SELECT id, doc_id FROM documents").fetchall())

    def get(self, ids: Iterable[int]) -> list[dict[str, Any]]:
        """Document rows for FAISS ids, in the order asked (unknown ids are left out)."""
        wanted = [int(i) for i in ids]
        if not wanted:
            return []
        marks = ",".join("?" * len(wanted))
        rows = {
            row["id"]: row
            for row in self.db.query(f"SELECT * FROM documents WHERE id IN ({marks})", wanted)
        }
        return [rows[i] for i in wanted if i in rows]

    def get_passages(self, ids: Iterable[int]) -> list[dict[str, Any]]:
        """For passage ids (the FAISS ids of a passage index), their document's row with the
        passage as ``passage`` (offsets and text), in the order asked (unknown ids left out)."""
        wanted = [int(i) for i in ids]
        if not wanted:
            return []
        marks = ",".join("?" * len(wanted))
        rows = {}
        for row in self.db.query(
            "SELECT p.id AS passage_id, p.position, p.token_start, p.token_end, p.char_start, "
            "p.char_end, p.text AS passage_text, d.* FROM passages p "
            f"JOIN documents d ON d.id = p.document WHERE p.id IN ({marks})",
            wanted,
        ):
            passage = {key: row.pop(key) for key in PASSAGE_FIELDS}
            passage["text"] = row.pop("passage_text")
            passage["id"] = row.pop("passage_id")
            rows[passage["id"]] = {**row, "passage": passage}
        return [rows[i] for i in wanted if i in rows]

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """The stored vectors (fp32) of these documents, in the order asked."""
        wanted = [int(i) for i in ids]
        blobs: dict[int, bytes] = {}
        for start in range(0, len(wanted), 500):
            part = wanted[start : start + 500]
            marks = ",".join("?" * len(part))
            blobs.update(
                self.db.execute(f"SELECT id, vector FROM vectors WHERE id IN ({marks})", part)
            )
        missing = [i for i in wanted if i not in blobs]
        if missing:
            raise EngineError(f"index at {self.folder} has no vector for documents {missing[:5]}")
        if not wanted:
            return np.zeros((0, int(self.settings["dim"])), dtype=np.float32)
        dtype = self.vector_dtype
        return np.vstack([np.frombuffer(blobs[i], dtype=dtype) for i in wanted]).astype(np.float32)

    def stats(self) -> dict[str, Any]:
        tokens = self.db.execute("SELECT coalesce(sum(token_count), 0) FROM documents").fetchone()[
            0
        ]
        size = sum(f.stat().st_size for f in self.folder.iterdir() if f.is_file())
        if self.lexical.path.is_dir():
            size += sum(f.stat().st_size for f in self.lexical.path.rglob("*") if f.is_file())
        sources = self.db.execute("SELECT count(DISTINCT source) FROM documents").fetchone()[0]
        counts = {"documents": self.count(), "sources": sources}
        if self.has_passages:
            counts["passage_count"] = self.vector_count()
        return {**counts, "tokens": tokens, "bytes": size}

    # ------------------------------------------------------------- changes
    def commit(
        self,
        *,
        remove: Sequence[int] = (),
        upsert: Sequence[dict[str, Any]] = (),
        vectors: np.ndarray | None = None,
    ) -> None:
        """Apply one checkpoint in one transaction: removals, then new/changed documents.

        Rows in ``upsert`` with an ``id`` replace that document, which gets a new id
        (ids are never reused, so a snapshot can be caught up by comparing ids).
        ``vectors[i]`` belongs to ``upsert[i]``; in a passage index each row carries
        its ``passages`` (offsets and text) and ``vectors`` holds theirs, row after row,
        and a removed or replaced document takes all its passages with it. The first
        commit of a store created with ``publish_first_commit`` also publishes it.
        """
        if not remove and not upsert:
            return
        if not self.writer:
            self.snapshots.forget()  # a mapped snapshot is read-only: reload after the change
        now = utc_now()
        spec = self.spec
        stored = (
            np.asarray(vectors, dtype=self.vector_dtype)
            if vectors is not None
            else np.zeros((0, 0), self.vector_dtype)
        )
        replaced = [int(r["id"]) for r in upsert if r.get("id") is not None]
        gone = [int(i) for i in remove] + replaced
        passages = self.has_passages
        with self.db.atomic():
            created = {}
            if replaced:
                created = dict(
                    self.db.execute(
                        f"SELECT id, created FROM documents WHERE id IN ({','.join('?' * len(replaced))})",
                        replaced,
                    ).fetchall()
                )
            documents_gone = gone
            if passages and gone:
                gone = self._passage_ids(documents_gone)
                self.db.conn.executemany(
                    "DELETE FROM passages WHERE document = ?", [(i,) for i in documents_gone]
                )
            if gone:
                ids = [(i,) for i in gone]
                self.db.conn.executemany("DELETE FROM vectors WHERE id = ?", ids)
                if not spec.can_remove:
                    self.db.conn.executemany(
                        "INSERT OR IGNORE INTO tombstones (id) VALUES (?)", ids
                    )
            self.db.conn.executemany(
                "DELETE FROM documents WHERE id = ?", [(i,) for i in documents_gone]
            )
            new_ids = []  # vector ids: the documents', or their passages'
            new_texts = []  # what the lexical side indexes of each, in new_ids order
            vectors_left = iter(stored)
            for row in upsert:
                record = {k: v for k, v in row.items() if k not in ("id", "passages")}
                record["created"] = created.get(row.get("id"), now)
                record["updated"] = now
                doc_id = self.db["documents"].insert(record).last_pk
                for passage in row["passages"] if passages else [None]:
                    vector_id = doc_id
                    if passage is not None:
                        vector_id = (
                            self.db["passages"].insert({**passage, "document": doc_id}).last_pk
                        )
                    new_texts.append(document_text(row["title"], (passage or row)["text"]))
                    vector = next(vectors_left, None)
                    if vector is None:
                        raise ValueError("one vector a document (or a passage) is needed")
                    self.db.conn.execute(
                        "INSERT INTO vectors (id, vector) VALUES (?, ?)",
                        (vector_id, vector.tobytes()),
                    )
                    new_ids.append(vector_id)
            if next(vectors_left, None) is not None:
                raise ValueError("one vector a document (or a passage) is needed")
            put_settings(self.db, {"generation": self.generation + 1, "updated": now})
        self.snapshots.apply_commit(spec, gone, new_ids, stored)
        # The lexical side holds what the vectors are: documents, or passages.
        self.lexical.apply_commit(gone, new_ids, new_texts)
        if self._publish_pending:
            self._publish_pending = False
            self.publish()

    def _passage_ids(self, documents: Sequence[int]) -> list[int]:
        found: list[int] = []
        for start in range(0, len(documents), 500):
            part = list(documents[start : start + 500])
            found += [
                row[0]
                for row in self.db.execute(
                    f"SELECT id FROM passages WHERE document IN ({','.join('?' * len(part))})",
                    part,
                )
            ]
        return found

    def insert_salvaged(self, rows: Iterable[tuple[dict[str, Any], Any]]) -> int:
        """Copy documents as they are (ids and dates kept) with their vectors into this new
        database, in one transaction, as its first generation (`engine check --repair`).

        A row is ``(document, vector)``, or in an index of passages ``(document,
        [(passage, vector), ...])`` with the passages' ids kept too."""
        kept = 0
        with self.db.atomic():
            for document, vectors in rows:
                self.db["documents"].insert(document)
                if isinstance(vectors, list):
                    pairs = [
                        (self.db["passages"].insert({**p, "document": document["id"]}).last_pk, v)
                        for p, v in vectors
                    ]
                else:
                    pairs = [(document["id"], vectors)]
                for vector_id, vector in pairs:
                    stored = np.asarray(vector).astype(self.vector_dtype)
                    self.db.conn.execute(
                        "INSERT INTO vectors (id, vector) VALUES (?, ?)",
                        (vector_id, stored.tobytes()),
                    )
                kept += 1
            put_settings(self.db, {"generation": 1})
        return kept

    def set_index_type(self, index_type: str) -> None:
        """Switch the FAISS index type; the snapshot is rebuilt from the stored vectors."""
        current = self.spec
        count = self.vector_count()
        if index_type == current.type and not vector_index.is_stale(current, count):
            return
        self._start_index_generation(vector_index.resolve(index_type, count, current.dim))

    def refresh_index(self) -> None:
        """Before publishing: re-resolve a stale spec (auto, IVF growth) and compact tombstones."""
        spec = self.spec
        count = self.vector_count()
        if vector_index.is_stale(spec, count):
            self._start_index_generation(vector_index.resolve(spec.type, count, spec.dim))
        elif len(self.snapshots.tombstones) > COMPACT_TOMBSTONES * max(count, 1):
            self._start_index_generation(spec)

    def _start_index_generation(self, spec: IndexSpec) -> None:
        """A new generation whose index is built afresh from SQLite (older snapshots don't apply)."""
        generation = self.generation + 1
        with self.db.atomic():
            put_settings(
                self.db,
                {**spec.to_settings(), "generation": generation, "index_generation": generation},
            )
            self.db.execute("DELETE FROM tombstones")
        self.snapshots.forget()

    # --------------------------------------------------------------- FAISS
    def load_faiss(self) -> faiss.Index:
        """The FAISS index of the current generation (see :meth:`Snapshots.load`)."""
        return self.snapshots.load()

    def lexical_search(
        self, queries: Sequence[str], k: int, allowed: Iterable[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` BM25 (scores, ids) per query, (n, k) arrays padded with id -1; only
        ids in ``allowed`` when given (a filter applied inside the search)."""
        return self.lexical.search(queries, k, allowed)

    def search(
        self,
        vectors: np.ndarray,
        k: int,
        knobs: SearchKnobs = SearchKnobs(),  # noqa: B008 - frozen
        allowed: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` inner-product (scores, ids); on the GPUs when a faiss GPU build has some.
        ``allowed``: only these vector ids (:meth:`matching`), applied inside the search."""
        return vector_index.top_k(
            self.snapshots.search_index(),
            self.spec,
            vectors,
            k,
            self.vectors,
            knobs=knobs,
            tombstones=self.snapshots.tombstones,
            allowed=allowed,
        )

    def matching(self, condition: Condition, *, vectors: bool = False) -> np.ndarray:
        """Ids of the documents a filter matches; with ``vectors``, the vector ids they own
        (their passages' in an index of passages). The condition's values are bound."""
        sql, params = condition.select()
        if vectors and self.has_passages:
            sql = f"SELECT id FROM passages WHERE document IN ({sql})"
        try:
            found = [row[0] for row in self.db.execute(sql, params)]
        except sqlite3.OperationalError as exc:
            raise EngineError(f"--where {condition.text!r} cannot be applied: {exc}") from None
        return np.asarray(found, dtype=np.int64)


class Writer:
    """The one writer of an index folder: holds the lock, picks or creates the database.

    A new index (first run, or a rebuild with nothing to keep answering) is
    published at its first checkpoint; a rebuild of a live index only at the end.
    A lost pointer is recovered from the last published database.
    """

    def __init__(self, folder: str | Path, settings: dict[str, Any], *, rebuild: bool) -> None:
        self.folder = Path(folder)
        self.settings = settings
        self.rebuild = rebuild
        self._lock: WriterLock | None = None
        self.store: Store | None = None

    def __enter__(self) -> Store:
        self._lock = WriterLock(self.folder)
        self._lock.acquire()
        try:
            self.store = self._open()
        except BaseException:
            self._lock.release()
            raise
        return self.store

    def _open(self) -> Store:
        current = read_pointer(self.folder)
        if current is None or not (self.folder / current).is_file():
            recovered = recover_pointer(self.folder)
            if recovered is None and not self.rebuild:
                refuse_unknown_databases(self.folder)
        if self.rebuild or not (self.folder / POINTER).is_file():
            return Store.create(
                self.folder,
                self.settings,
                publish_first_commit=not (self.folder / POINTER).is_file(),
            )
        store = Store.open(self.folder, writer=True)
        check_compatible(store.settings, self.settings, f"index at {self.folder}")
        with reporting_damage(self.folder):
            store.write_settings({"engine_version": self.settings["engine_version"]})
            if self.settings.get("index_type"):
                store.set_index_type(self.settings["index_type"])
        return store

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None and self.store is not None:
                with reporting_damage(self.folder):
                    self.store.publish()
        finally:
            if self.store is not None:
                self.store.close()
            if self._lock is not None:
                self._lock.release()


def read_index_settings(folder: Path) -> dict[str, Any] | None:
    """Settings of the index a writer of ``folder`` continues (current or recoverable), else None."""
    current = read_pointer(folder)
    if current is None or not (folder / current).is_file():
        published = published_databases(folder)
        if not published:
            return None
        current = published[0][1]
    store = Store.open_database(folder, current)
    try:
        return store.settings
    finally:
        store.close()
