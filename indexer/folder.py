"""The index folder: the ``CURRENT`` pointer, publishing, pointer recovery, the writer lock.

Layout of an index folder::

    CURRENT                 {"db": "index-<token>.db"}   (atomically replaced)
    index-<token>.db        SQLite: settings, documents, vectors
    index-<token>.<gen>.faiss
    index-<token>.lexical/  the BM25 index (indexer.lexical)
    lock                    held by the one writer

Every file that must survive a crash whole is written to a temp file, fsynced and
renamed over the old one (:func:`atomic_write`). A lost pointer is recovered from
the last published database, never replaced.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from engine.errors import EngineError

POINTER = "CURRENT"
LOCK = "lock"


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


def read_pointer(folder: Path) -> str | None:
    """The database name ``CURRENT`` names, or None if it is missing or unreadable."""
    try:
        name = json.loads((folder / POINTER).read_text())["db"]
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None
    return name if isinstance(name, str) and "/" not in name else None


def write_pointer(folder: Path, db_name: str) -> None:
    """Make ``db_name`` the current database (an atomic replace of ``CURRENT``)."""
    atomic_write(folder / POINTER, json.dumps({"db": db_name}) + "\n")


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


def interrupted_first_run(folder: Path) -> str | None:
    """The database of a first run killed before its first publish completed (it holds
    documents and is marked ``first_run``, nothing was ever published), newest first."""
    found = []
    for path in database_files(folder):
        try:
            uri = f"file:{path}?mode=ro"
            with sqlite3.connect(uri, uri=True, timeout=5) as conn:
                marked = conn.execute("SELECT value FROM settings WHERE key = 'first_run'")
                if marked.fetchone() is None:
                    continue
                documents = conn.execute("SELECT count(*) FROM documents").fetchone()[0]
            conn.close()
        except sqlite3.Error:
            continue
        if documents:
            found.append((path.stat().st_mtime_ns, path.name))
    return max(found)[1] if found else None


def recover_pointer(folder: Path) -> str | None:
    """Point ``CURRENT`` back at the last published database, or at the database of a first run
    killed while publishing, if there is one (writers only)."""
    published = published_databases(folder)
    if published:
        name = published[0][1]
        warn(f"{POINTER} pointer of {folder} was lost; recovered it from {name}")
    else:
        name = interrupted_first_run(folder)
        if name is None:
            return None
        warn(f"the first run on {folder} was killed while publishing; resuming it from {name}")
    write_pointer(folder, name)
    return name


def crash_point(name: str) -> None:
    """Test hook: ``ENGINE_CRASH_AT=name`` kills this process here with SIGKILL, so the
    reliability suite kills at chosen points of a publish (not by timing). Unset: nothing."""
    if os.environ.get("ENGINE_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


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


def remove_stale_files(folder: Path, db_name: str, derived: set[str]) -> None:
    """Old databases and what was derived from them (FAISS snapshots, lexical index folders)
    that no pointer names any more; ``derived`` names the current database's own."""
    keep = {db_name, POINTER, LOCK, *derived}
    keep |= {db_name + "-wal", db_name + "-shm", db_name + "-journal"}
    for path in folder.iterdir():
        if path.name in keep or not path.name.startswith("index-"):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


class WriterLock:
    """The lock every writer of a folder holds (``engine index``, ``engine check --repair``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._file = None

    def acquire(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._file = open(self.folder / LOCK, "w")  # noqa: SIM115 - held for the run
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


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that a crash leaves the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
