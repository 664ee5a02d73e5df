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

Vectors live in SQLite as fp16 (half the size of fp32; nDCG@10 within 0.001, see
bench/results/README.md). The FAISS side (index types, snapshots, search knobs,
GPUs) is in :mod:`indexer.vector_index`; readers map the snapshot instead of
copying it. A document whose text changes gets a new id (ids are never reused),
so an older snapshot can be caught up with SQLite by comparing ids: after a kill
the last published snapshot plus the difference is the index, no rebuild.

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
import shutil
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
from indexer import vector_index
from indexer.lexical import LexicalSide
from indexer.vector_index import IndexSpec, SearchKnobs

POINTER = "CURRENT"
# The settings key of the last snapshot written: {"file", "generation", "vectors", "sha256"}.
SNAPSHOT_KEY = "snapshot"
# PRAGMA quick_check reads the whole file: done on open up to this size, always by `engine check`.
QUICK_CHECK_MAX_BYTES = 512 * 2**20
# Hashing a snapshot reads it whole, which mapping it avoids: checksums are verified on open up
# to this size (cold start of large indexes), always by `engine check`.
SNAPSHOT_HASH_MAX_BYTES = 256 * 2**20
# Snapshot states that are no damage: rebuilt from SQLite without a warning.
QUIET_SNAPSHOT_PROBLEMS = ("missing", "unrecorded")
# SQLite page size of new databases. A 384-d fp16 vector row takes ~780 bytes: a 4 KiB page holds
# 5 of them and wastes ~5% (820 bytes a vector), a 16 KiB page 21 (~780 bytes). Existing databases
# keep their page size (a physical layout, not the schema: nothing to migrate).
PAGE_SIZE = 16384
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


def _m002_fp16_vectors(db: sqlite_utils.Database) -> None:
    """Vectors as fp16 (was fp32), converted in chunks; ids removed from graph indexes."""
    last = 0
    while True:
        rows = db.execute(
            "SELECT id, vector FROM vectors WHERE id > ? ORDER BY id LIMIT 4096", [last]
        ).fetchall()
        if not rows:
            break
        db.conn.executemany(
            "UPDATE vectors SET vector = ? WHERE id = ?",
            [
                (np.frombuffer(blob, dtype=np.float32).astype(np.float16).tobytes(), doc_id)
                for doc_id, blob in rows
            ],
        )
        last = rows[-1][0]
    db.execute(
        "INSERT OR REPLACE INTO settings (key, value) VALUES ('vector_dtype', ?)",
        [json.dumps("float16")],
    )
    db.execute("CREATE TABLE tombstones (id INTEGER PRIMARY KEY)")


MIGRATIONS = (_m001_initial, _m002_fp16_vectors)
# Snapshots are compacted (rebuilt from SQLite) when tombstones pass this share of the index.
COMPACT_TOMBSTONES = 0.25


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

    def __init__(
        self, folder: Path, db_name: str, db: sqlite_utils.Database, *, writer: bool = False
    ) -> None:
        self.folder = folder
        self.db_name = db_name
        self.db = db
        # Readers map the snapshot read-only; the writer reads a copy it can change.
        self.writer = writer
        self._faiss: faiss.Index | None = None
        self._gpu_index: Any = None
        # Ids still in a graph index (HNSW) that searches must skip.
        self._tombstones = np.zeros(0, dtype=np.int64)
        self._spec_override: IndexSpec | None = None
        self._faiss_verified = False
        # A first run publishes after its first checkpoint (see Writer).
        self.publish_on_commit = False
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
            store = cls(folder, db_name, _connect(path), writer=writer)
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
        store = cls(folder, db_name, _connect(folder / db_name), writer=True)
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
            }
        )
        return store

    def publish(self) -> None:
        """Make this database the current one (atomic pointer swap) and drop the old files.

        The ``published`` setting is what pointer recovery trusts: only a database
        that was once current can take the pointer back.
        """
        self.refresh_index()
        self.write_faiss()
        self.lexical.load()  # in step (built on the first publish of an older index)
        self.write_settings({"published": utc_now()})
        _atomic_write(self.folder / POINTER, json.dumps({"db": self.db_name}) + "\n")
        self.remove_stale_files()

    @property
    def is_current(self) -> bool:
        return read_pointer(self.folder) == self.db_name

    def close(self) -> None:
        self.lexical.close()
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

    @property
    def spec(self) -> IndexSpec:
        """The FAISS index type and parameters stored with the index (or tried in memory)."""
        return self._spec_override or IndexSpec.from_settings(self.settings)

    def try_index_type(self, index_type: str) -> None:
        """Search this open store through another index type, built in memory from the
        stored vectors; nothing is written (benchmarks compare types on one cached index)."""
        self._spec_override = vector_index.resolve(
            vector_index.validate_type(index_type), self.count(), int(self.settings["dim"])
        )
        self._gpu_index = None
        self._tombstones = np.zeros(0, dtype=np.int64)
        self._faiss = self.rebuild_faiss()

    @property
    def vector_dtype(self) -> np.dtype:
        return stored_vector_dtype(self.settings)

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

        Rows in ``upsert`` with an ``id`` replace that document, which gets a new id
        (ids are never reused, so a snapshot can be caught up by comparing ids).
        ``vectors[i]`` belongs to ``upsert[i]``.
        """
        if not remove and not upsert:
            return
        if self._faiss is not None and not self.writer:
            self._faiss = None  # a mapped snapshot is read-only: reload after the change
        now = utc_now()
        spec = self.spec
        stored = (
            np.asarray(vectors, dtype=self.vector_dtype)
            if vectors is not None
            else np.zeros((0, 0), self.vector_dtype)
        )
        replaced = [int(r["id"]) for r in upsert if r.get("id") is not None]
        gone = [int(i) for i in remove] + replaced
        with self.db.atomic():
            created = {}
            if replaced:
                created = dict(
                    self.db.execute(
                        f"SELECT id, created FROM documents WHERE id IN ({','.join('?' * len(replaced))})",
                        replaced,
                    ).fetchall()
                )
            if gone:
                ids = [(i,) for i in gone]
                self.db.conn.executemany("DELETE FROM vectors WHERE id = ?", ids)
                self.db.conn.executemany("DELETE FROM documents WHERE id = ?", ids)
                if not spec.can_remove:
                    self.db.conn.executemany(
                        "INSERT OR IGNORE INTO tombstones (id) VALUES (?)", ids
                    )
            new_ids = []
            for row, vector in zip(upsert, stored, strict=True):
                record = {k: v for k, v in row.items() if k != "id"}
                record["created"] = created.get(row.get("id"), now)
                record["updated"] = now
                doc_id = self.db["documents"].insert(record).last_pk
                self.db.conn.execute(
                    "INSERT INTO vectors (id, vector) VALUES (?, ?)", (doc_id, vector.tobytes())
                )
                new_ids.append(doc_id)
            self._put_settings({"generation": self.generation + 1, "updated": now})
        self._faiss_verified = False
        self._apply_to_index(spec, gone, new_ids, stored)
        self.lexical.apply_commit(gone, new_ids, upsert)
        if self.publish_on_commit:
            self.publish_on_commit = False
            self.publish()

    def _apply_to_index(self, spec: IndexSpec, gone: list[int], new_ids: list[int], stored) -> None:
        """Keep a loaded FAISS index in step with a commit (removals or tombstones, additions)."""
        index = self._faiss
        if index is None:
            return
        if gone:
            if spec.can_remove:
                vector_index.remove(index, gone)
            else:
                held = np.intersect1d(np.asarray(gone, np.int64), vector_index.index_ids(index))
                self._tombstones = np.union1d(self._tombstones, held)
        if new_ids:
            if index.is_trained:
                # The index gets exactly what SQLite holds (fp16-rounded), as a rebuild would.
                vector_index.add(index, np.asarray(new_ids), stored.astype(np.float32))
            else:
                self._faiss = None  # built (trained) from SQLite on publish

    def set_index_type(self, index_type: str) -> None:
        """Switch the FAISS index type; the snapshot is rebuilt from the stored vectors."""
        current = self.spec
        if index_type == current.type and not vector_index.is_stale(current, self.count()):
            return
        self._use_spec(vector_index.resolve(index_type, self.count(), current.dim))

    def refresh_index(self) -> None:
        """Before publishing: re-resolve a stale spec (auto, IVF growth) and compact tombstones."""
        spec = self.spec
        count = self.count()
        if vector_index.is_stale(spec, count):
            self._use_spec(vector_index.resolve(spec.type, count, spec.dim))
        elif len(self._tombstones) > COMPACT_TOMBSTONES * max(count, 1):
            self._use_spec(spec)

    def _use_spec(self, spec: IndexSpec) -> None:
        """A new generation whose index is built afresh from SQLite (older snapshots don't apply)."""
        generation = self.generation + 1
        with self.db.atomic():
            self._put_settings(
                {**spec.to_settings(), "generation": generation, "index_generation": generation}
            )
            self.db.execute("DELETE FROM tombstones")
        self._faiss = None
        self._gpu_index = None
        self._tombstones = np.zeros(0, dtype=np.int64)

    # --------------------------------------------------------------- FAISS
    def faiss_path(self, generation: int | None = None) -> Path:
        generation = self.generation if generation is None else generation
        return self.folder / f"{Path(self.db_name).stem}.{generation}.faiss"

    def load_faiss(self) -> faiss.Index:
        """The FAISS index for the current generation.

        The current snapshot, verified against its recorded checksum (mapped for
        readers); when a run was killed after a commit, the last published snapshot
        caught up with SQLite by id difference; else a rebuild from SQLite. Stale
        snapshots are handled quietly, damaged ones with a one-line warning.
        """
        if self._faiss is not None:
            return self._faiss
        spec = self.spec
        index = None
        problem = self.snapshot_problem(hash_limit=SNAPSHOT_HASH_MAX_BYTES)
        if problem is None:
            index = self._read_snapshot(self.faiss_path())
            index = self._with_tombstones(index, spec) if index is not None else None
            if index is None:
                problem = "unreadable"
        if problem not in (None, *QUIET_SNAPSHOT_PROBLEMS):
            warn(
                f"FAISS snapshot {self.faiss_path().name} is damaged ({problem}); "
                "rebuilt it from the database"
            )
        self._faiss_verified = index is not None
        if index is None and problem == "missing":
            index = self._catch_up(spec)
        if index is None:
            index = self.rebuild_faiss()
            self._tombstones = np.zeros(0, dtype=np.int64)
        self._faiss = index
        return index

    def snapshot_problem(self, hash_limit: float = float("inf")) -> str | None:
        """Why the snapshot of the current generation cannot be trusted, or None if it can.

        "missing" and "unrecorded" (no checksum: an older engine, or a writer killed
        between writing the file and recording it) are normal; anything else is damage.
        Files over ``hash_limit`` bytes are not hashed (opening a large index stays fast;
        `engine check` always hashes).
        """
        path = self.faiss_path()
        if not path.is_file():
            return "missing"
        record = self.settings.get(SNAPSHOT_KEY)
        if not isinstance(record, dict) or record.get("file") != path.name:
            return "unrecorded"
        if record.get("vectors") != self.count():
            return f"{record.get('vectors')} vectors recorded, {self.count()} in the database"
        if path.stat().st_size <= hash_limit and file_sha256(path) != record.get("sha256"):
            return "checksum mismatch"
        return None

    def _read_snapshot(self, path: Path, *, mmap: bool | None = None) -> faiss.Index | None:
        try:
            return vector_index.read(path, mmap=not self.writer if mmap is None else mmap)
        except RuntimeError:
            return None

    def _with_tombstones(self, index: faiss.Index, spec: IndexSpec) -> faiss.Index | None:
        """The index if its live vectors are exactly SQLite's count (graph tombstones aside)."""
        tombstones = np.zeros(0, dtype=np.int64)
        if not spec.can_remove:
            rows = self.db.execute("SELECT id FROM tombstones").fetchall()
            if rows:
                held = vector_index.index_ids(index)
                tombstones = np.intersect1d(np.asarray([r[0] for r in rows], np.int64), held)
        if index.d != spec.dim or index.ntotal - len(tombstones) != self.count():
            return None
        self._tombstones = tombstones
        return index

    def _catch_up(self, spec: IndexSpec) -> faiss.Index | None:
        """The last published snapshot plus what SQLite gained and lost since (a writer killed
        mid-run): ids are never reused, so the id difference is exactly what changed."""
        path = self._older_snapshot()
        if path is None:
            return None
        index = self._read_snapshot(path, mmap=False)  # a copy we can change, never the mapped file
        if index is None or index.d != spec.dim:
            return None
        held = vector_index.index_ids(index)
        live = np.fromiter((r[0] for r in self.db.execute("SELECT id FROM vectors")), np.int64)
        gone = np.setdiff1d(held, live)
        missing = np.setdiff1d(live, held)
        if spec.can_remove:
            vector_index.remove(index, gone)
            self._tombstones = np.zeros(0, dtype=np.int64)
        else:
            self._tombstones = gone
        for start in range(0, len(missing), 8192):
            part = missing[start : start + 8192]
            vector_index.add(index, part, self.vectors(part.tolist()))
        return index

    def _older_snapshot(self) -> Path | None:
        """The last recorded snapshot if it is older than the current generation, built with the
        current index spec, and (up to the hashing limit) matches its checksum."""
        record = self.settings.get(SNAPSHOT_KEY)
        if not isinstance(record, dict) or not isinstance(record.get("generation"), int):
            return None
        usable = range(int(self.settings.get("index_generation", 0)), self.generation)
        path = self.folder / str(record.get("file"))
        if record["generation"] not in usable or path != self.faiss_path(record["generation"]):
            return None
        if not path.is_file():
            return None
        if path.stat().st_size <= SNAPSHOT_HASH_MAX_BYTES and file_sha256(path) != record.get(
            "sha256"
        ):
            return None
        return path

    def rebuild_faiss(self) -> faiss.Index:
        """A fresh index from SQLite, streamed in chunks (never a second full copy)."""
        spec = self.spec
        dim = int(self.settings["dim"])
        sample = None
        if spec.needs_training:
            size = vector_index.training_size(spec)
            ids = [r[0] for r in self.db.execute("SELECT id FROM vectors")]
            rng = np.random.default_rng(0)
            chosen = rng.choice(ids, size=min(size, len(ids)), replace=False) if ids else []
            sample = self.vectors(sorted(int(i) for i in chosen))
        rows = self.db.execute("SELECT id, vector FROM vectors ORDER BY id")
        try:
            return vector_index.build(
                spec, vector_index.iter_chunks(rows, self.vector_dtype, dim), sample=sample
            )
        except (RuntimeError, ValueError) as exc:
            raise EngineError(
                f"cannot build a {spec.factory} index on {self.count()} documents: "
                f"{str(exc).strip().splitlines()[-1]}"
            ) from None

    def write_faiss(self) -> None:
        """Write the snapshot for the current generation (temp file + atomic rename) and record
        its checksum, live vector count and generation; a verified snapshot is kept as it is."""
        index = self.load_faiss()
        path = self.faiss_path()
        if self._faiss_verified and path.is_file() and self.snapshot_problem() is None:
            return
        tmp = path.with_suffix(".faiss.tmp")
        vector_index.write(index, tmp)
        _fsync_file(tmp)
        record = {
            "file": path.name,
            "generation": self.generation,
            "vectors": int(index.ntotal) - len(self._tombstones),
            "sha256": file_sha256(tmp),
        }
        os.replace(tmp, path)
        _fsync_dir(self.folder)
        self.write_settings({SNAPSHOT_KEY: record})
        self._faiss_verified = True

    def rewrite_snapshot(self) -> None:
        """Rebuild the snapshot from SQLite and write it, whatever is on disk (repair)."""
        self._faiss = self.rebuild_faiss()
        self._tombstones = np.zeros(0, dtype=np.int64)
        self._faiss_verified = False
        self.write_faiss()

    def remove_stale_files(self) -> None:
        """Old FAISS snapshots, databases and lexical indexes that no pointer names any more."""
        keep = {self.db_name, self.faiss_path().name, POINTER, "lock", self.lexical.path.name}
        keep |= {self.db_name + "-wal", self.db_name + "-shm", self.db_name + "-journal"}
        for file in self.folder.iterdir():
            if file.name in keep or not file.name.startswith("index-"):
                continue
            if file.is_dir():
                shutil.rmtree(file, ignore_errors=True)
            else:
                file.unlink(missing_ok=True)

    def search(
        self,
        vectors: np.ndarray,
        k: int,
        knobs: SearchKnobs = SearchKnobs(),  # noqa: B008 - frozen
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` inner-product (scores, ids); on the GPUs when a faiss GPU build has some."""
        index = self._search_index()
        live = index.ntotal - len(self._tombstones)
        if live <= 0:
            empty = np.zeros((len(vectors), 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        k = max(1, min(k, live))
        spec = self.spec
        factor = int(spec.params.get("rerank", 0))
        fetch = min(live, k * factor) if factor else k
        scores, ids = vector_index.search(
            index, spec, vectors, fetch, knobs=knobs, tombstones=self._tombstones
        )
        if factor:  # compressed codes rank candidates; the stored vectors score them exactly
            return vector_index.rerank(vectors, ids, self.vectors, k)
        return scores, ids

    def lexical_search(
        self, queries: Sequence[str], k: int, allowed: Iterable[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` BM25 (scores, ids) per query, (n, k) arrays padded with id -1; only
        ids in ``allowed`` when given (a filter applied inside the search)."""
        return self.lexical.search(queries, k, allowed)

    def _search_index(self) -> Any:
        index = self.load_faiss()
        if vector_index.gpu_count() > 0:
            if self._gpu_index is None:
                self._gpu_index = vector_index.to_gpus(index, self.spec, self._tombstones) or index
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


def stored_vector_dtype(settings: dict[str, Any]) -> np.dtype:
    """How vectors are stored in SQLite: fp16 since migration 2, fp32 before."""
    return np.dtype(settings.get("vector_dtype", "float32"))


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


def index_settings(
    describe: dict[str, Any], default_instruction: str | None, index_type: str | None = None
) -> dict[str, Any]:
    """Settings stored with a new index (from the encoder's description).

    ``index_type`` None keeps an existing index's type (``auto`` for a new one).
    """
    return {
        **describe,
        "engine_version": __version__,
        "metric": "inner_product",
        "default_instruction": default_instruction,
        "index_type": index_type,
    }


def _connect(path: Path) -> sqlite_utils.Database:
    conn = sqlite3.connect(str(path), timeout=30)
    db = sqlite_utils.Database(conn)
    try:
        # Only takes effect on a new, empty database (before WAL mode writes its header).
        db.execute(f"PRAGMA page_size = {PAGE_SIZE}")
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
