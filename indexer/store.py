"""The persistent store: SQLite (documents, vectors, settings) plus a FAISS index.

Crash safety comes from one rule: SQLite is the source of truth and every change
is one SQLite transaction. The FAISS file is a snapshot of the vectors table,
named by the generation it reflects and replaced atomically; when it is missing
or stale (a run was killed after a commit) it is rebuilt from SQLite. Each
snapshot's SHA-256, vector count and generation are recorded in SQLite when it
is written and verified when it is read, so a damaged snapshot is rebuilt,
never searched. A first run publishes its database after its first checkpoint
(a killed first run resumes, searches answer from what is committed); a
``--rebuild`` writes a new database next to the old one and switches the
``CURRENT`` pointer only when it is complete, so the old index answers until then.
A lost pointer is recovered from the last published database, never replaced.

Layout of an index folder::

    CURRENT                 {"db": "index-<token>.db"}   (atomically replaced)
    index-<token>.db        SQLite: settings, documents, vectors
    index-<token>.<gen>.faiss
    lock                    held by the one writer
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sqlite3
import sys
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
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
# The settings key of the last snapshot written: {"file", "generation", "vectors", "sha256"}.
SNAPSHOT_KEY = "snapshot"
# PRAGMA quick_check reads the whole file: done on open up to this size, always by `engine check`.
QUICK_CHECK_MAX_BYTES = 512 * 2**20
# Snapshot states that are no damage: rebuilt from SQLite without a warning.
QUIET_SNAPSHOT_PROBLEMS = ("missing", "unrecorded")
# Settings every index has; without them the database cannot be used or repaired.
REQUIRED_SETTINGS = ("model", "fingerprint", "dim", "max_length")


def repair_hint(folder: Path) -> str:
    return f"run `engine check --repair --index {folder}`"


def rebuild_hint(folder: Path) -> str:
    return f"re-index with `engine index CORPUS --index {folder} --rebuild`"


@contextmanager
def reporting_damage(folder: str | Path) -> Iterator[None]:
    """SQLite errors from a damaged database become one line that names the repair."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        raise EngineError(
            f"index database at {folder} is damaged ({exc}); {repair_hint(Path(folder))}"
        ) from None


def warn(message: str) -> None:
    """One line on stderr: something was wrong and has been dealt with."""
    print(f"Warning: {message}", file=sys.stderr, flush=True)


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
        self._faiss_verified = False
        # A first run publishes after its first checkpoint (see Writer).
        self.publish_on_commit = False

    # ------------------------------------------------------------- opening
    @classmethod
    def open(cls, folder: str | Path, *, quick_check: bool = True) -> Store:
        """Open an existing index; a one-line error naming the repair if it is missing or broken."""
        folder = Path(folder)
        pointer = folder / POINTER
        if not pointer.is_file():
            if published_databases(folder):
                raise EngineError(
                    f"index at {folder} has lost its {POINTER} pointer; {repair_hint(folder)}"
                )
            raise EngineError(f"no index at {folder} (run `engine index` first)")
        db_name = read_pointer(folder)
        if db_name is None:
            raise EngineError(
                f"index at {folder} is corrupt: unreadable {POINTER} file; {repair_hint(folder)}"
            )
        return cls.open_database(folder, db_name, quick_check=quick_check)

    @classmethod
    def open_database(cls, folder: Path, db_name: str, *, quick_check: bool = True) -> Store:
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
            store = cls(folder, db_name, _connect(path))
            try:
                store._validate(quick_check and path.stat().st_size <= QUICK_CHECK_MAX_BYTES)
            except BaseException:
                store.close()
                raise
        return store

    def _validate(self, quick_check: bool) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise EngineError(f"index at {self.folder} was made by a newer engine; upgrade engine")
        if version == 0:
            raise EngineError(
                f"index database at {self.folder} has no index in it; {rebuild_hint(self.folder)}"
            )
        if quick_check:
            problems = quick_check_problems(self.db)
            if problems:
                raise EngineError(
                    f"index database at {self.folder} is damaged ({problems[0]}); "
                    f"{repair_hint(self.folder)}"
                )
        migrate(self.db)
        missing = [key for key in REQUIRED_SETTINGS if key not in self.settings]
        if missing:
            raise EngineError(
                f"index database at {self.folder} lacks its settings ({', '.join(missing)}); "
                f"{rebuild_hint(self.folder)}"
            )

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
        """Make this database the current one (atomic pointer swap) and drop the old files.

        The ``published`` setting is what pointer recovery trusts: only a database
        that was once current can take the pointer back.
        """
        self.write_faiss()
        self.write_settings({"published": utc_now()})
        _atomic_write(self.folder / POINTER, json.dumps({"db": self.db_name}) + "\n")
        self.remove_stale_files()

    @property
    def is_current(self) -> bool:
        return read_pointer(self.folder) == self.db_name

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

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """The stored vectors of these documents, in the order asked (for exports)."""
        wanted = [int(i) for i in ids]
        marks = ",".join("?" * len(wanted))
        blobs = dict(
            self.db.execute(f"SELECT id, vector FROM vectors WHERE id IN ({marks})", wanted)
        )
        missing = [i for i in wanted if i not in blobs]
        if missing:
            raise EngineError(f"index at {self.folder} has no vector for documents {missing[:5]}")
        return np.vstack([np.frombuffer(blobs[i], dtype=np.float32) for i in wanted])

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
        self._faiss_verified = False
        if index is not None:
            replaced = list(remove) + [r["id"] for r in upsert if r.get("id") is not None]
            if replaced:
                index.remove_ids(np.asarray(replaced, dtype=np.int64))
            if new_ids:
                index.add_with_ids(
                    np.ascontiguousarray(vectors, dtype=np.float32),
                    np.asarray(new_ids, dtype=np.int64),
                )
        if self.publish_on_commit:
            self.publish_on_commit = False
            self.publish()

    # --------------------------------------------------------------- FAISS
    def faiss_path(self, generation: int | None = None) -> Path:
        generation = self.generation if generation is None else generation
        return self.folder / f"{Path(self.db_name).stem}.{generation}.faiss"

    def load_faiss(self) -> faiss.Index:
        """The FAISS snapshot for the current generation, verified against its recorded checksum.

        A stale snapshot (a run was killed after a commit) is rebuilt from SQLite
        quietly; a damaged one (checksum, count or format) with a one-line warning.
        """
        if self._faiss is not None:
            return self._faiss
        problem = self.snapshot_problem()
        index = None
        if problem is None:
            index = self._read_snapshot()
            if index is None:
                problem = "unreadable"
        if problem not in (None, *QUIET_SNAPSHOT_PROBLEMS):
            warn(
                f"FAISS snapshot {self.faiss_path().name} is damaged ({problem}); "
                "rebuilt it from the database"
            )
        self._faiss_verified = index is not None
        self._faiss = index if index is not None else self.rebuild_faiss()
        return self._faiss

    def snapshot_problem(self) -> str | None:
        """Why the snapshot of the current generation cannot be trusted, or None if it can.

        "missing" and "unrecorded" (no checksum: an older engine, or a writer killed
        between writing the file and recording it) are normal; anything else is damage.
        """
        path = self.faiss_path()
        if not path.is_file():
            return "missing"
        record = self.settings.get(SNAPSHOT_KEY)
        if not isinstance(record, dict) or record.get("file") != path.name:
            return "unrecorded"
        if record.get("vectors") != self.count():
            return f"{record.get('vectors')} vectors recorded, {self.count()} in the database"
        if file_sha256(path) != record.get("sha256"):
            return "checksum mismatch"
        return None

    def _read_snapshot(self) -> faiss.Index | None:
        try:
            index = faiss.read_index(str(self.faiss_path()))
        except RuntimeError:
            return None
        return index if index.ntotal == self.count() else None

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
        """Write the snapshot for the current generation (temp file + atomic rename) and record
        its checksum, vector count and generation; a verified snapshot is kept as it is."""
        index = self.load_faiss()
        path = self.faiss_path()
        if self._faiss_verified and path.is_file() and self.snapshot_problem() is None:
            return
        tmp = path.with_suffix(".faiss.tmp")
        faiss.write_index(index, str(tmp))
        _fsync_file(tmp)
        record = {
            "file": path.name,
            "generation": self.generation,
            "vectors": int(index.ntotal),
            "sha256": file_sha256(tmp),
        }
        os.replace(tmp, path)
        _fsync_dir(self.folder)
        self.write_settings({SNAPSHOT_KEY: record})
        self._faiss_verified = True

    def rewrite_snapshot(self) -> None:
        """Rebuild the snapshot from SQLite and write it, whatever is on disk (repair)."""
        self._faiss = self.rebuild_faiss()
        self._faiss_verified = False
        self.write_faiss()

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
            store = Store.create(self.folder, self.settings)
            store.publish_on_commit = not (self.folder / POINTER).is_file()
            return store
        store = Store.open(self.folder)
        check_compatible(store.settings, self.settings, f"index at {self.folder}")
        with reporting_damage(self.folder):
            store.write_settings({"engine_version": self.settings["engine_version"]})
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


class WriterLock:
    """The lock every writer of a folder holds (``engine index``, ``engine check --repair``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._file = None

    def acquire(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._file = open(self.folder / "lock", "w")  # noqa: SIM115 - held for the run
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.release()
            raise EngineError(f"another `engine index` is writing {self.folder}") from None

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def indexed_settings(folder: Path) -> dict[str, Any] | None:
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


def read_pointer(folder: Path) -> str | None:
    """The database name ``CURRENT`` names, or None if it is missing or unreadable."""
    try:
        name = json.loads((folder / POINTER).read_text())["db"]
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None
    return name if isinstance(name, str) and "/" not in name else None


def database_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("index-*.db")) if folder.is_dir() else []


def published_databases(folder: Path) -> list[tuple[str, str]]:
    """(published time, name) of every readable database that was once current, newest first."""
    found = []
    for path in database_files(folder):
        if path.stat().st_size == 0:
            continue
        try:
            uri = f"file:{path}?mode=ro"
            with sqlite3.connect(uri, uri=True, timeout=5) as conn:
                row = conn.execute("SELECT value FROM settings WHERE key = 'published'").fetchone()
        except sqlite3.Error:
            continue
        if row is not None:
            found.append((json.loads(row[0]), path.name))
        conn.close()
    return sorted(found, reverse=True)


def recover_pointer(folder: Path) -> str | None:
    """Point ``CURRENT`` back at the last published database, if there is one (writers only)."""
    published = published_databases(folder)
    if not published:
        return None
    name = published[0][1]
    _atomic_write(folder / POINTER, json.dumps({"db": name}) + "\n")
    warn(f"{POINTER} pointer of {folder} was lost; recovered it from {name}")
    return name


def refuse_unknown_databases(folder: Path) -> None:
    """No pointer and nothing published, yet databases with documents: never start over silently."""
    for path in database_files(folder):
        try:
            uri = f"file:{path}?mode=ro"
            with sqlite3.connect(uri, uri=True, timeout=5) as conn:
                documents = conn.execute("SELECT count(*) FROM documents").fetchone()[0]
            conn.close()
        except sqlite3.Error:
            continue
        if documents:
            raise EngineError(
                f"index at {folder} has no {POINTER} pointer but {path.name} holds "
                f"{documents} documents; {repair_hint(folder)} or {rebuild_hint(folder)}"
            )


def quick_check_problems(db: sqlite_utils.Database) -> list[str]:
    """What SQLite's quick_check finds wrong (structure, not content); empty when sound."""
    rows = [row[0] for row in db.execute("PRAGMA quick_check").fetchall()]
    return [] if rows == ["ok"] else rows


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_compatible(
    stored: dict[str, Any],
    wanted: dict[str, Any],
    where: str,
    fix: str = "use --rebuild to re-index",
) -> None:
    """Refuse to mix vectors from different models or lengths in one index (or collection).

    ``where`` names the thing, e.g. ``index at ./.engine``.
    """
    if stored.get("fingerprint") != wanted.get("fingerprint"):
        raise EngineError(
            f"{where} was built with model {stored.get('model')!r} "
            f"(fingerprint {str(stored.get('fingerprint'))[:12]}), not {wanted.get('model')!r} "
            f"({str(wanted.get('fingerprint'))[:12]}); {fix}"
        )
    for key in ("max_length", "dim"):
        if stored.get(key) != wanted.get(key):
            raise EngineError(f"{where} has {key}={stored.get(key)}, not {wanted.get(key)}; {fix}")


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
