"""The persistent store: SQLite (documents, vectors, settings) plus a FAISS index.

Crash safety comes from one rule: SQLite is the source of truth and every change
is one SQLite transaction. The FAISS file is a snapshot of the vectors table,
named by the generation it reflects and replaced atomically; when it is missing
or stale (a run was killed after a commit) it is rebuilt from SQLite. A
``--rebuild`` writes a new database next to the old one and switches the
``CURRENT`` pointer only when it is complete, so the old index answers until then.

Layout of an index folder::

    CURRENT                 {"db": "index-<token>.db"}   (atomically replaced)
    index-<token>.db        SQLite: settings, documents, vectors
    index-<token>.<gen>.faiss
    lock                    held by the one writer
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import sqlite_utils

from engine import __version__
from engine.errors import EngineError

POINTER = "CURRENT"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# Numbered migrations, applied in order; PRAGMA user_version records the last one.
def _m001_initial(db: sqlite_utils.Database) -> None:
    db.execute("CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute(
        """
        CREATE TABLE documents (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            doc_id TEXT NOT NULL,
            source TEXT NOT NULL,
            title TEXT NOT NULL,
            text TEXT NOT NULL,
            content_hash TEXT NOT NULL,
            token_count INTEGER NOT NULL,
            created TEXT NOT NULL,
            updated TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE UNIQUE INDEX documents_key ON documents (source, doc_id)")
    db.execute(
        "CREATE TABLE vectors (id INTEGER PRIMARY KEY REFERENCES documents(id), vector BLOB NOT NULL)"
    )


MIGRATIONS = (_m001_initial,)


def migrate(db: sqlite_utils.Database) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
        with db.atomic():
            migration(db)
            db.execute(f"PRAGMA user_version = {number}")


@dataclass(frozen=True)
class StoredDocument:
    id: int
    content_hash: str


class Store:
    """One index folder: read it, search it, and (as the writer) change it."""

    def __init__(self, folder: Path, db_name: str, db: sqlite_utils.Database) -> None:
        self.folder = folder
        self.db_name = db_name
        self.db = db
        self._faiss: faiss.Index | None = None

    # ------------------------------------------------------------- opening
    @classmethod
    def open(cls, folder: str | Path) -> Store:
        """Open an existing index for reading; a clear error if it is missing or broken."""
        folder = Path(folder)
        pointer = folder / POINTER
        if not pointer.is_file():
            raise EngineError(f"no index at {folder} (run `engine index` first)")
        try:
            db_name = json.loads(pointer.read_text())["db"]
        except (ValueError, KeyError, TypeError):
            raise EngineError(f"index at {folder} is corrupt: unreadable {POINTER} file") from None
        if not (folder / db_name).is_file():
            raise EngineError(f"index at {folder} is corrupt: {db_name} is missing")
        store = cls(folder, db_name, _connect(folder / db_name))
        try:
            if store.db.execute("PRAGMA user_version").fetchone()[0] > len(MIGRATIONS):
                raise EngineError(f"index at {folder} was made by a newer engine; upgrade engine")
            migrate(store.db)
            store.settings  # noqa: B018 - read once to validate
        except sqlite3.DatabaseError as exc:
            raise EngineError(f"index at {folder} is corrupt: {exc}") from None
        return store

    @classmethod
    def create(cls, folder: str | Path, settings: dict[str, Any]) -> Store:
        """A new, empty database in ``folder``; it becomes current only on :meth:`publish`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        db_name = f"index-{uuid.uuid4().hex[:12]}.db"
        store = cls(folder, db_name, _connect(folder / db_name))
        migrate(store.db)
        now = utc_now()
        store.write_settings({**settings, "created": now, "updated": now, "generation": 0})
        return store

    def publish(self) -> None:
        """Make this database the current one (atomic pointer swap) and drop the old files."""
        self.write_faiss()
        _atomic_write(self.folder / POINTER, json.dumps({"db": self.db_name}) + "\n")
        self.remove_stale_files()

    @property
    def is_current(self) -> bool:
        try:
            return json.loads((self.folder / POINTER).read_text())["db"] == self.db_name
        except (OSError, ValueError, KeyError):
            return False

    def close(self) -> None:
        self.db.conn.close()

    # ------------------------------------------------------------ settings
    @property
    def settings(self) -> dict[str, Any]:
        rows = self.db.execute("SELECT key, value FROM settings").fetchall()
        return {key: json.loads(value) for key, value in rows}

    def write_settings(self, values: dict[str, Any]) -> None:
        with self.db.atomic():
            self._put_settings(values)

    def _put_settings(self, values: dict[str, Any]) -> None:
        self.db["settings"].upsert_all(
            [{"key": k, "value": json.dumps(v)} for k, v in values.items()], pk="key"
        )

    @property
    def generation(self) -> int:
        return int(self.settings.get("generation", 0))

    # ----------------------------------------------------------- documents
    def count(self) -> int:
        return self.db.execute("SELECT count(*) FROM documents").fetchone()[0]

    def existing(self) -> dict[tuple[str, str], StoredDocument]:
        """(source, doc id) -> stored id and content hash, for the incremental diff."""
        rows = self.db.execute("SELECT source, doc_id, id, content_hash FROM documents")
        return {(s, d): StoredDocument(i, h) for s, d, i, h in rows}

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

    def stats(self) -> dict[str, Any]:
        tokens = self.db.execute("SELECT coalesce(sum(token_count), 0) FROM documents").fetchone()[
            0
        ]
        size = sum(f.stat().st_size for f in self.folder.iterdir() if f.is_file())
        sources = self.db.execute("SELECT count(DISTINCT source) FROM documents").fetchone()[0]
        return {"documents": self.count(), "sources": sources, "tokens": tokens, "bytes": size}

    # ------------------------------------------------------------- changes
    def commit(
        self,
        *,
        remove: Sequence[int] = (),
        upsert: Sequence[dict[str, Any]] = (),
        vectors: np.ndarray | None = None,
    ) -> None:
        """Apply one checkpoint in one transaction: removals, then new/changed documents.

        Rows in ``upsert`` with an ``id`` replace that document; rows without get a
        new id. ``vectors[i]`` belongs to ``upsert[i]``.
        """
        if not remove and not upsert:
            return
        now = utc_now()
        index = self._faiss
        with self.db.atomic():
            if remove:
                ids = [(int(i),) for i in remove]
                self.db.conn.executemany("DELETE FROM vectors WHERE id = ?", ids)
                self.db.conn.executemany("DELETE FROM documents WHERE id = ?", ids)
            new_ids = []
            for row, vector in zip(upsert, vectors if vectors is not None else [], strict=True):
                record = {k: v for k, v in row.items() if k != "id"}
                record["updated"] = now
                if row.get("id") is not None:
                    self.db["documents"].update(row["id"], record)
                    doc_id = int(row["id"])
                else:
                    record["created"] = now
                    doc_id = self.db["documents"].insert(record).last_pk
                self.db.conn.execute(
                    "INSERT OR REPLACE INTO vectors (id, vector) VALUES (?, ?)",
                    (doc_id, np.asarray(vector, dtype=np.float32).tobytes()),
                )
                new_ids.append(doc_id)
            self._put_settings({"generation": self.generation + 1, "updated": now})
        if index is not None:
            replaced = list(remove) + [r["id"] for r in upsert if r.get("id") is not None]
            if replaced:
                index.remove_ids(np.asarray(replaced, dtype=np.int64))
            if new_ids:
                index.add_with_ids(
                    np.ascontiguousarray(vectors, dtype=np.float32),
                    np.asarray(new_ids, dtype=np.int64),
                )

    # --------------------------------------------------------------- FAISS
    def faiss_path(self, generation: int | None = None) -> Path:
        generation = self.generation if generation is None else generation
        return self.folder / f"{Path(self.db_name).stem}.{generation}.faiss"

    def load_faiss(self) -> faiss.Index:
        """The FAISS snapshot for the current generation, rebuilt from SQLite if stale or broken."""
        if self._faiss is not None:
            return self._faiss
        path = self.faiss_path()
        index = None
        if path.is_file():
            try:
                index = faiss.read_index(str(path))
            except RuntimeError:
                index = None
            if index is not None and index.ntotal != self.count():
                index = None
        self._faiss = index if index is not None else self.rebuild_faiss()
        return self._faiss

    def rebuild_faiss(self) -> faiss.Index:
        dim = int(self.settings["dim"])
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        ids, vectors = [], []
        for doc_id, blob in self.db.execute("SELECT id, vector FROM vectors ORDER BY id"):
            ids.append(doc_id)
            vectors.append(np.frombuffer(blob, dtype=np.float32))
        if ids:
            index.add_with_ids(np.vstack(vectors), np.asarray(ids, dtype=np.int64))
        return index

    def write_faiss(self) -> None:
        """Write the snapshot for the current generation (temp file + atomic rename)."""
        index = self.load_faiss()
        path = self.faiss_path()
        if path.is_file():
            return
        tmp = path.with_suffix(".faiss.tmp")
        faiss.write_index(index, str(tmp))
        _fsync_file(tmp)
        os.replace(tmp, path)
        _fsync_dir(self.folder)

    def remove_stale_files(self) -> None:
        """Old FAISS snapshots and databases that no pointer names any more."""
        keep = {self.db_name, self.faiss_path().name, POINTER, "lock"}
        keep |= {self.db_name + "-wal", self.db_name + "-shm", self.db_name + "-journal"}
        for file in self.folder.iterdir():
            if file.is_file() and file.name not in keep and file.name.startswith("index-"):
                file.unlink(missing_ok=True)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact inner-product search; on a GPU when a faiss GPU build is present."""
        index = self._search_index()
        k = max(1, min(k, index.ntotal))
        if index.ntotal == 0:
            empty = np.zeros((len(vectors), 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        return index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)

    def _search_index(self) -> faiss.Index:
        index = self.load_faiss()
        if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
            if getattr(self, "_gpu_index", None) is None:
                self._gpu_index = faiss.index_cpu_to_all_gpus(index)
            return self._gpu_index
        return index


class Writer:
    """The one writer of an index folder: holds the lock, picks or creates the database."""

    def __init__(self, folder: str | Path, settings: dict[str, Any], *, rebuild: bool) -> None:
        self.folder = Path(folder)
        self.settings = settings
        self.rebuild = rebuild
        self._lock_file = None
        self.store: Store | None = None

    def __enter__(self) -> Store:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.folder / "lock", "w")  # noqa: SIM115 - held for the run
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EngineError(f"another `engine index` is writing {self.folder}") from None
        if self.rebuild or not (self.folder / POINTER).is_file():
            self.store = Store.create(self.folder, self.settings)
            return self.store
        store = Store.open(self.folder)
        check_compatible(store.settings, self.settings, self.folder)
        store.write_settings({"engine_version": self.settings["engine_version"]})
        self.store = store
        return store

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None and self.store is not None:
                self.store.publish()
        finally:
            if self.store is not None:
                self.store.close()
            if self._lock_file is not None:
                self._lock_file.close()


def check_compatible(stored: dict[str, Any], wanted: dict[str, Any], folder: Path) -> None:
    """Refuse to mix vectors from different models or lengths in one index."""
    if stored.get("fingerprint") != wanted.get("fingerprint"):
        raise EngineError(
            f"index at {folder} was built with model {stored.get('model')!r} "
            f"(fingerprint {str(stored.get('fingerprint'))[:12]}), not {wanted.get('model')!r} "
            f"({str(wanted.get('fingerprint'))[:12]}); use --rebuild to re-index"
        )
    for key in ("max_length", "dim"):
        if stored.get(key) != wanted.get(key):
            raise EngineError(
                f"index at {folder} has {key}={stored.get(key)}, not {wanted.get(key)}; "
                "use --rebuild to re-index"
            )


def index_settings(describe: dict[str, Any], default_instruction: str | None) -> dict[str, Any]:
    """Settings stored with a new index (from the encoder's description)."""
    return {
        **describe,
        "engine_version": __version__,
        "metric": "inner_product",
        "default_instruction": default_instruction,
    }


def _connect(path: Path) -> sqlite_utils.Database:
    conn = sqlite3.connect(str(path), timeout=30)
    db = sqlite_utils.Database(conn)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
    except sqlite3.DatabaseError as exc:
        raise EngineError(f"index database {path} is corrupt: {exc}") from None
    return db


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    _fsync_file(tmp)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
