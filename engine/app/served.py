"""The index `engine serve` answers from: a published index folder, or a Milvus collection.

Before a batch that searches, :class:`ServedIndex` checks (one ``stat``) whether
``engine index`` published since: every publish atomically replaces the
``CURRENT`` pointer, so a new pointer file means a complete new generation, and
the store is reopened from it. The snapshot is read into memory and verified (a
file truncated or overwritten under the server cannot crash it or change its
answers; the change is reported on /health). Checkpoints a running ``engine index`` commits
before it publishes stay invisible: the server reads the store in one SQLite read
transaction (a WAL snapshot) from one publish to the next.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from engine.encoder import Encoder
from engine.errors import EngineError
from indexer.folder import POINTER
from indexer.info import index_info
from indexer.milvus import MilvusIndex
from indexer.schema import check_compatible
from indexer.store import Store

log = logging.getLogger("engine.server")


class ServedIndex:
    """The index folder as last published; reopened when `engine index` publishes again.

    Used from the batcher's thread only (a SQLite connection belongs to its thread).
    """

    def __init__(self, folder: Path, encoder: Encoder) -> None:
        self.folder = folder
        self.encoder = encoder
        self.store: Store | None = None
        self.generation: int | None = None
        self._stamp: tuple[int, int, int] | None = None
        # Why the server answers from less than the published index (shown on /health):
        # a reopen that failed (kept until the pointer changes again: no retry per batch),
        # a served snapshot changed on disk (answered from the verified copy in memory).
        self.reopen_problem: str | None = None
        self.snapshot_problem: str | None = None
        self._failed_stamp: tuple[int, int, int] | None = None

    def _pointer_stamp(self) -> tuple[int, int, int]:
        try:
            stat = os.stat(self.folder / POINTER)
        except FileNotFoundError:
            raise EngineError(f"no index at {self.folder} (run `engine index` first)") from None
        return (stat.st_ino, stat.st_mtime_ns, stat.st_size)

    def current(self) -> Store:
        """The store of the latest published generation (reopened only when it changed)."""
        stamp = self._pointer_stamp()
        if self.store is not None and stamp in (self._stamp, self._failed_stamp):
            self._check_snapshot(self.store)
            return self.store
        try:
            store = self._open()
        except EngineError as exc:
            if self.store is None:
                raise
            self._failed_stamp = stamp
            self.reopen_problem = (
                f"reopening {self.folder} failed ({exc}); answering from generation "
                f"{self.generation} until the next publish"
            )
            log.warning("%s", self.reopen_problem)
            return self.store
        old, self.store, self._stamp = self.store, store, stamp
        self.generation = store.generation
        self.reopen_problem = self.snapshot_problem = None
        if old is not None:
            old.close()
        return store

    @property
    def problems(self) -> list[str]:
        """What /health reports as degraded (checks the snapshot: one ``stat``, any thread)."""
        if self.store is not None:
            self._check_snapshot(self.store)
        return [p for p in (self.reopen_problem, self.snapshot_problem) if p is not None]

    def _check_snapshot(self, store: Store) -> None:
        """The served snapshot replaced, truncated or rewritten in place is said once (the
        answers still come from the copy verified when it was read)."""
        snapshots = store.snapshots
        if self.snapshot_problem is None and snapshots.changed_on_disk():
            self.snapshot_problem = (
                f"FAISS snapshot {snapshots.read_from.name} changed on disk after it was "
                "verified; answering from the verified copy in memory until the next publish"
            )
            log.warning("%s", self.snapshot_problem)

    def _open(self) -> Store:
        store = Store.open(self.folder)
        try:
            try:  # in step on disk first: a store holding a read snapshot never writes
                store.lexical.load()
            except EngineError:
                pass  # a running `engine index` builds it; searched in memory meanwhile
            # One read transaction until the next publish: checkpoints a running
            # `engine index` commits meanwhile stay invisible (WAL keeps this snapshot).
            store.hold_read_snapshot()
            settings = store.settings
            if settings["max_length"] != self.encoder.max_length:
                self.encoder.set_max_length(settings["max_length"])
            check_compatible(
                settings,
                {**self.encoder.describe(), "max_length": settings["max_length"]},
                f"index at {self.folder}",
                fix="restart `engine serve` with the model it was built with",
            )
            store.snapshots.in_memory = True  # never a mapped file that can change under us
            store.load_faiss()
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def info(self) -> dict[str, Any]:
        return index_info(self.current(), self.folder)


class ServedMilvus:
    """A Milvus collection written by `engine export milvus`, served like an index folder.

    Milvus makes each upsert visible by itself, so there are no generations to follow.
    """

    generation = None

    def __init__(self, backend: MilvusIndex) -> None:
        self.backend = backend

    def current(self) -> MilvusIndex:
        return self.backend

    def info(self) -> dict[str, Any]:
        return self.backend.info()

    def close(self) -> None:
        self.backend.close()
