"""The FAISS snapshot lifecycle of one store: load, verify, catch up, write, rebuild.

SQLite is the source of truth; the FAISS file is a snapshot of the vectors table,
named by the generation it reflects and replaced atomically. Each snapshot's
SHA-256, vector count and generation are recorded in SQLite when it is written and
verified when it is read, so a damaged snapshot is rebuilt, never searched. When
it is missing or stale (a run was killed after a commit) the last published
snapshot is caught up by id difference (ids are never reused), else the index is
rebuilt from SQLite. Readers map the snapshot instead of copying it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from engine.errors import EngineError
from indexer import vector_index
from indexer.folder import file_sha256, fsync_dir, fsync_file, warn
from indexer.vector_index import IndexSpec

if TYPE_CHECKING:
    from indexer.store import Store

# The settings key of the last snapshot written: {"file", "generation", "vectors", "sha256"}.
SNAPSHOT_KEY = "snapshot"
# Hashing a snapshot reads it whole, which mapping it avoids: checksums are verified on open up
# to this size (cold start of large indexes), always by `engine check`.
SNAPSHOT_HASH_MAX_BYTES = 256 * 2**20
# Snapshot states that are no damage: rebuilt from SQLite without a warning.
QUIET_SNAPSHOT_PROBLEMS = ("missing", "unrecorded")
# Snapshots are compacted (rebuilt from SQLite) when tombstones pass this share of the index.
COMPACT_TOMBSTONES = 0.25


def no_ids() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


class Snapshots:
    """The FAISS index of one store: its snapshot files and the index in memory."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.index: faiss.Index | None = None
        self.gpu_index: Any = None
        # Ids still in a graph index (HNSW) that searches must skip.
        self.tombstones = no_ids()
        self.verified = False
        # Read the snapshot into memory and verify those very bytes instead of mapping it
        # (`engine serve`: a file truncated or overwritten under a long-lived process can
        # neither crash it with SIGBUS nor change its answers).
        self.in_memory = False
        # The snapshot file the index in memory was read from, and its (inode, size, mtime).
        self.read_from: Path | None = None
        self.stamp: tuple[int, int, int] | None = None

    def path(self, generation: int | None = None) -> Path:
        store = self.store
        generation = store.generation if generation is None else generation
        return store.folder / f"{Path(store.db_name).stem}.{generation}.faiss"

    def forget(self) -> None:
        """Drop the index in memory: the next :meth:`load` reads or builds it afresh."""
        self.index = None
        self.gpu_index = None
        self.tombstones = no_ids()

    def load(self) -> faiss.Index:
        """The FAISS index for the current generation.

        The current snapshot, verified against its recorded checksum (mapped for
        readers, unless :attr:`in_memory`); when a run was killed after a commit, the last published snapshot
        caught up with SQLite by id difference; else a rebuild from SQLite. Stale
        snapshots are handled quietly, damaged ones with a one-line warning.
        """
        if self.index is not None:
            return self.index
        spec = self.store.spec
        index = None
        self.stamp = None
        problem = self.problem(hash_limit=0 if self.in_memory else SNAPSHOT_HASH_MAX_BYTES)
        if problem is None:
            if self.in_memory:
                index, problem = self._read_verified(self.path())
            else:
                index = self._read(self.path())
            index = self._with_tombstones(index, spec) if index is not None else None
            if index is None and problem is None:
                problem = "unreadable"
        if problem not in (None, *QUIET_SNAPSHOT_PROBLEMS):
            warn(
                f"FAISS snapshot {self.path().name} is damaged ({problem}); "
                "rebuilt it from the database"
            )
        self.verified = index is not None
        if index is None and problem == "missing":
            index = self._catch_up(spec)
        if index is None:
            index = self.build(spec)
            self.tombstones = no_ids()
        self.index = index
        return index

    def problem(self, hash_limit: float = float("inf")) -> str | None:
        """Why the snapshot of the current generation cannot be trusted, or None if it can.

        "missing" and "unrecorded" (no checksum: an older engine, or a writer killed
        between writing the file and recording it) are normal; anything else is damage.
        Files over ``hash_limit`` bytes are not hashed (opening a large index stays fast;
        `engine check` always hashes).
        """
        path = self.path()
        if not path.is_file():
            return "missing"
        record = self.store.settings.get(SNAPSHOT_KEY)
        if not isinstance(record, dict) or record.get("file") != path.name:
            return "unrecorded"
        count = self.store.vector_count()
        if record.get("vectors") != count:
            return f"{record.get('vectors')} vectors recorded, {count} in the database"
        if path.stat().st_size <= hash_limit and file_sha256(path) != record.get("sha256"):
            return "checksum mismatch"
        return None

    def changed_on_disk(self) -> bool:
        """Whether the snapshot file the index in memory came from was replaced, truncated or
        rewritten since it was read (one ``stat``, no SQLite: safe from any thread)."""
        if self.stamp is None or self.read_from is None:
            return False
        try:
            stat = os.stat(self.read_from)
        except OSError:
            return True
        return (stat.st_ino, stat.st_size, stat.st_mtime_ns) != self.stamp

    def _read_verified(self, path: Path) -> tuple[faiss.Index | None, str | None]:
        """The snapshot read whole into memory, its bytes checked against the recorded SHA-256."""
        with open(path, "rb") as handle:
            stat = os.fstat(handle.fileno())
            data = handle.read()
        if hashlib.sha256(data).hexdigest() != self.store.settings[SNAPSHOT_KEY].get("sha256"):
            return None, "checksum mismatch"
        try:
            index = vector_index.deserialize(data)
        except RuntimeError:
            return None, "unreadable"
        self.read_from, self.stamp = path, (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        return index, None

    def _read(self, path: Path, *, mmap: bool | None = None) -> faiss.Index | None:
        try:
            return vector_index.read(path, mmap=not self.store.writer if mmap is None else mmap)
        except RuntimeError:
            return None

    def _with_tombstones(self, index: faiss.Index, spec: IndexSpec) -> faiss.Index | None:
        """The index if its live vectors are exactly SQLite's count (graph tombstones aside)."""
        tombstones = no_ids()
        if not spec.can_remove:
            rows = self.store.db.execute("SELECT id FROM tombstones").fetchall()
            if rows:
                held = vector_index.index_ids(index)
                tombstones = np.intersect1d(np.asarray([r[0] for r in rows], np.int64), held)
        if index.d != spec.dim or index.ntotal - len(tombstones) != self.store.vector_count():
            return None
        self.tombstones = tombstones
        return index

    def _catch_up(self, spec: IndexSpec) -> faiss.Index | None:
        """The last published snapshot plus what SQLite gained and lost since (a writer killed
        mid-run): ids are never reused, so the id difference is exactly what changed."""
        path = self._older_snapshot()
        if path is None:
            return None
        index = self._read(path, mmap=False)  # a copy we can change, never the mapped file
        if index is None or index.d != spec.dim:
            return None
        held = vector_index.index_ids(index)
        rows = self.store.db.execute("SELECT id FROM vectors")
        live = np.fromiter((r[0] for r in rows), np.int64)
        gone = np.setdiff1d(held, live)
        missing = np.setdiff1d(live, held)
        if spec.can_remove:
            vector_index.remove(index, gone)
            self.tombstones = no_ids()
        else:
            self.tombstones = gone
        for start in range(0, len(missing), 8192):
            part = missing[start : start + 8192]
            vector_index.add(index, part, self.store.vectors(part.tolist()))
        return index

    def _older_snapshot(self) -> Path | None:
        """The last recorded snapshot if it is older than the current generation, built with the
        current index spec, and (up to the hashing limit) matches its checksum."""
        settings = self.store.settings
        record = settings.get(SNAPSHOT_KEY)
        if not isinstance(record, dict) or not isinstance(record.get("generation"), int):
            return None
        usable = range(int(settings.get("index_generation", 0)), self.store.generation)
        path = self.store.folder / str(record.get("file"))
        if record["generation"] not in usable or path != self.path(record["generation"]):
            return None
        if not path.is_file():
            return None
        if path.stat().st_size <= SNAPSHOT_HASH_MAX_BYTES and file_sha256(path) != record.get(
            "sha256"
        ):
            return None
        return path

    def build(self, spec: IndexSpec) -> faiss.Index:
        """A fresh ``spec`` index from SQLite, streamed in chunks (never a second full copy)."""
        store = self.store
        dim = int(store.settings["dim"])
        sample = None
        if spec.needs_training:
            size = vector_index.training_size(spec)
            ids = [r[0] for r in store.db.execute("SELECT id FROM vectors")]
            rng = np.random.default_rng(0)
            chosen = rng.choice(ids, size=min(size, len(ids)), replace=False) if ids else []
            sample = store.vectors(sorted(int(i) for i in chosen))
        rows = store.db.execute("SELECT id, vector FROM vectors ORDER BY id")
        try:
            return vector_index.build(
                spec, vector_index.iter_chunks(rows, store.vector_dtype, dim), sample=sample
            )
        except (RuntimeError, ValueError) as exc:
            raise EngineError(
                f"cannot build a {spec.factory} index on {store.vector_count()} vectors: "
                f"{str(exc).strip().splitlines()[-1]}"
            ) from None

    def write(self) -> None:
        """Write the snapshot for the current generation (temp file + atomic rename) and record
        its checksum, live vector count and generation; a verified snapshot is kept as it is."""
        index = self.load()
        path = self.path()
        if self.verified and path.is_file() and self.problem() is None:
            return
        tmp = path.with_suffix(".faiss.tmp")
        vector_index.write(index, tmp)
        fsync_file(tmp)
        record = {
            "file": path.name,
            "generation": self.store.generation,
            "vectors": int(index.ntotal) - len(self.tombstones),
            "sha256": file_sha256(tmp),
        }
        os.replace(tmp, path)
        fsync_dir(self.store.folder)
        self.store.write_settings({SNAPSHOT_KEY: record})
        self.verified = True

    def rewrite(self) -> None:
        """Rebuild the snapshot from SQLite and write it, whatever is on disk (repair)."""
        self.index = self.build(self.store.spec)
        self.tombstones = no_ids()
        self.verified = False
        self.write()

    def apply_commit(
        self, spec: IndexSpec, gone: list[int], new_ids: list[int], stored: np.ndarray
    ) -> None:
        """Keep a loaded index in step with a commit (removals or tombstones, additions)."""
        self.verified = False
        index = self.index
        if index is None:
            return
        if gone:
            if spec.can_remove:
                vector_index.remove(index, gone)
            else:
                held = np.intersect1d(np.asarray(gone, np.int64), vector_index.index_ids(index))
                self.tombstones = np.union1d(self.tombstones, held)
        if new_ids:
            if index.is_trained:
                # The index gets exactly what SQLite holds (fp16-rounded), as a rebuild would.
                vector_index.add(index, np.asarray(new_ids), stored.astype(np.float32))
            else:
                self.index = None  # built (trained) from SQLite on publish

    def search_index(self) -> Any:
        """The index searches use: a GPU copy when a faiss GPU build has GPUs, else the loaded one."""
        index = self.load()
        if vector_index.gpu_count() > 0:
            if self.gpu_index is None:
                self.gpu_index = (
                    vector_index.to_gpus(index, self.store.spec, self.tombstones) or index
                )
            return self.gpu_index
        return index
