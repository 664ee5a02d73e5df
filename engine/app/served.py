"""The index `engine serve` answers from: a published index folder, or a Milvus collection,
each an :class:`engine.api.Index` (the Python API), which the batcher searches.

Before a batch that searches, :class:`ServedIndex` checks (one ``stat``) whether
``engine index`` published since: every publish atomically replaces the
``CURRENT`` pointer, so a new pointer file means a complete new generation, and
the index is reopened from it, pinned (``Index.open(pinned=True)``): the snapshot is
read into memory and verified (a file truncated or overwritten under the server cannot
crash it or change its answers; the change is reported on /health), and checkpoints a
running ``engine index`` commits before it publishes stay invisible (one SQLite read
transaction, a WAL snapshot, from one publish to the next).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from engine.api import Index
from engine.encoder import Encoder
from engine.errors import EngineError
from indexer.folder import POINTER
from indexer.milvus import MilvusIndex
from indexer.search import fit_encoder

log = logging.getLogger("engine.server")


class ServedIndex:
    """The index folder as last published; reopened when `engine index` publishes again.

    Used from the batcher's thread only (a SQLite connection belongs to its thread).
    """

    def __init__(self, folder: Path, encoder: Encoder) -> None:
        self.folder = folder
        self.encoder = encoder
        self.index: Index | None = None
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

    def current(self) -> Index:
        """The latest published generation (reopened only when it changed)."""
        stamp = self._pointer_stamp()
        if self.index is not None and stamp in (self._stamp, self._failed_stamp):
            self._check_snapshot(self.index)
            return self.index
        try:
            index = self._open()
        except EngineError as exc:
            if self.index is None:
                raise
            self._failed_stamp = stamp
            self.reopen_problem = (
                f"reopening {self.folder} failed ({exc}); answering from generation "
                f"{self.generation} until the next publish"
            )
            log.warning("%s", self.reopen_problem)
            return self.index
        old, self.index, self._stamp = self.index, index, stamp
        self.generation = index.generation
        self.reopen_problem = self.snapshot_problem = None
        if old is not None:
            old.close()
        return index

    @property
    def problems(self) -> list[str]:
        """What /health reports as degraded (checks the snapshot: one ``stat``, any thread)."""
        if self.index is not None:
            self._check_snapshot(self.index)
        return [p for p in (self.reopen_problem, self.snapshot_problem) if p is not None]

    def _check_snapshot(self, index: Index) -> None:
        """The served snapshot replaced, truncated or rewritten in place is said once (the
        answers still come from the copy verified when it was read)."""
        snapshots = index.store.snapshots
        if self.snapshot_problem is None and snapshots.changed_on_disk():
            self.snapshot_problem = (
                f"FAISS snapshot {snapshots.read_from.name} changed on disk after it was "
                "verified; answering from the verified copy in memory until the next publish"
            )
            log.warning("%s", self.snapshot_problem)

    def _open(self) -> Index:
        index = Index.open(self.folder, pinned=True)
        try:
            fit_encoder(
                index.store,
                self.encoder,
                fix="restart `engine serve` with the model it was built with",
            )
        except BaseException:
            index.close()
            raise
        return index

    def close(self) -> None:
        if self.index is not None:
            self.index.close()
            self.index = None

    def info(self) -> dict[str, Any]:
        return self.current().info()


class ServedMilvus:
    """A Milvus collection written by `engine export milvus`, served like an index folder.

    Milvus makes each upsert visible by itself, so there are no generations to follow.
    """

    generation = None

    def __init__(self, backend: MilvusIndex) -> None:
        self.index = Index.on_milvus(backend)

    def current(self) -> Index:
        return self.index

    def info(self) -> dict[str, Any]:
        return self.index.info()

    def close(self) -> None:
        self.index.close()
