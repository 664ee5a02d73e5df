"""The index `engine serve` answers from: a published index folder, or a Milvus collection.

Before a batch that searches, :class:`ServedIndex` checks (one ``stat``) whether
``engine index`` published since: every publish atomically replaces the
``CURRENT`` pointer, so a new pointer file means a complete new generation, and
the store is reopened from it. Checkpoints a running ``engine index`` commits
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

    def _pointer_stamp(self) -> tuple[int, int, int]:
        try:
            stat = os.stat(self.folder / POINTER)
        except FileNotFoundError:
            raise EngineError(f"no index at {self.folder} (run `engine index` first)") from None
        return (stat.st_ino, stat.st_mtime_ns, stat.st_size)

    def current(self) -> Store:
        """The store of the latest published generation (reopened only when it changed)."""
        stamp = self._pointer_stamp()
        if stamp == self._stamp and self.store is not None:
            return self.store
        try:
            store = self._open()
        except EngineError:
            if self.store is None:
                raise
            log.warning("kept generation %s: reopening %s failed", self.generation, self.folder)
            return self.store
        old, self.store, self._stamp = self.store, store, stamp
        self.generation = store.generation
        if old is not None:
            old.close()
        return store

    def _open(self) -> Store:
        store = Store.open(self.folder)
        try:
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
        settings = self.backend.settings
        return {
            "backend": self.backend.uri,
            "collection": self.backend.collection,
            "model": settings["model"],
            "fingerprint": settings["fingerprint"],
            "dim": settings["dim"],
            "max_length": settings["max_length"],
            "index_type": settings.get("index_type"),
            "default_instruction": settings.get("default_instruction"),
            "documents": self.backend.count(),
            "exported": settings.get("exported"),
        }

    def close(self) -> None:
        self.backend.close()
