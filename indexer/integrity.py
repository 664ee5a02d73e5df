"""``engine check``: verify every file of an index folder and repair what can be rebuilt.

What is verified: the ``CURRENT`` pointer names a database that exists; SQLite's
own structure (``PRAGMA quick_check``); the settings an index needs (model,
fingerprint, dimension, max length); documents and vectors one to one, every
vector of the right size, every text matching its stored content hash (damage
inside a row passes quick_check) -- in an index of passages: every document with its
passages, passages and vectors one to one, every passage's text as long as its
character offsets say; the FAISS snapshot against the checksum, vector count
and generation recorded when it was written; the lexical (BM25) index opens and holds
exactly the database's documents.

What is repaired, always from what is sound: a lost pointer is pointed back at
the last published database; a damaged database is salvaged row by row into a
fresh one (documents whose vector is lost are left out, so the next
``engine index`` re-encodes them); a damaged or missing snapshot, and a damaged lexical
index, are rebuilt from SQLite. A database whose settings are gone cannot be repaired:
re-index.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import EngineError
from indexer.documents import Document
from indexer.folder import (
    POINTER,
    WriterLock,
    database_files,
    published_databases,
    read_pointer,
    rebuild_hint,
    warn,
    write_pointer,
)
from indexer.schema import REQUIRED_SETTINGS, stored_vector_dtype
from indexer.snapshots import QUIET_SNAPSHOT_PROBLEMS, SNAPSHOT_KEY
from indexer.store import PASSAGE_FIELDS, Store

# Settings that describe one database's history, not the index: a salvaged copy starts afresh.
_HISTORY_SETTINGS = {
    SNAPSHOT_KEY,
    "published",
    "generation",
    "index_generation",
    "updated",
    "vector_dtype",
}
_DOCUMENT_COLUMNS = (
    "id",
    "doc_id",
    "source",
    "title",
    "text",
    "content_hash",
    "token_count",
    "created",
    "updated",
)


@dataclass
class Finding:
    """The result of one check: ``check`` names what was looked at."""

    check: str
    ok: bool
    detail: str


@dataclass
class CheckReport:
    index: str
    database: str | None
    findings: list[Finding] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)
    # After a repair: the findings of the check run again on the result.
    after: list[Finding] | None = None

    @property
    def ok(self) -> bool:
        final = self.after if self.after is not None else self.findings
        return all(f.ok for f in final)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "database": self.database,
            "ok": self.ok,
            "findings": [asdict(f) for f in self.findings],
            "repairs": self.repairs,
            "after_repair": None if self.after is None else [asdict(f) for f in self.after],
        }


def check_index(folder: str | Path, *, repair: bool = False) -> CheckReport:
    """Verify ``folder``; with ``repair``, rebuild what can be rebuilt (under the writer lock)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EngineError(f"no index at {folder}")
    if not repair:
        return _inspect(folder)
    with WriterLock(folder):
        report = _inspect(folder)
        if report.ok:
            return report
        report.repairs = _repair(folder, report)
        again = _inspect(folder)
        report.after = again.findings
        report.database = again.database
        return report


# ------------------------------------------------------------------ checks
def _inspect(folder: Path) -> CheckReport:
    name, pointer = _check_pointer(folder)
    report = CheckReport(index=str(folder), database=name, findings=[pointer])
    if name is None:
        return report
    path = folder / name
    size = path.stat().st_size if path.is_file() else 0
    if size == 0:
        report.findings.append(Finding("database", False, f"{name} is empty (0 bytes)"))
        return report
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error as exc:
        report.findings.append(Finding("database", False, f"{name} cannot be opened ({exc})"))
        return report
    try:
        report.findings.extend(_check_database(conn, name))
    finally:
        conn.close()
    if all(f.ok for f in report.findings if f.check != "pointer"):
        report.findings.append(_check_snapshot(folder, name))
        report.findings.append(_check_lexical(folder, name))
    return report


def _check_pointer(folder: Path) -> tuple[str | None, Finding]:
    """The database to check and what the pointer says about it."""
    current = read_pointer(folder)
    if current is not None and (folder / current).is_file():
        return current, Finding("pointer", True, f"{POINTER} names {current}")
    if current is None:
        problem = (
            f"{POINTER} is missing"
            if not (folder / POINTER).exists()
            else f"{POINTER} is unreadable"
        )
    else:
        problem = f"{POINTER} names {current}, which is missing"
    candidate = _recoverable_database(folder)
    if candidate is None:
        return None, Finding("pointer", False, f"{problem}; no database to recover it from")
    return candidate, Finding("pointer", False, f"{problem}; recoverable from {candidate}")


def _recoverable_database(folder: Path) -> str | None:
    """The last published database; else the sound one with the most documents."""
    published = published_databases(folder)
    if published:
        return published[0][1]
    best, most = None, 0
    for path in database_files(folder):
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
            try:
                documents = conn.execute("SELECT count(*) FROM documents").fetchone()[0]
            finally:
                conn.close()
        except sqlite3.Error:
            continue
        if documents > most:
            best, most = path.name, documents
    return best


def _check_database(conn: sqlite3.Connection, name: str) -> list[Finding]:
    try:
        problems = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
    except sqlite3.DatabaseError as exc:
        return [Finding("database", False, f"{name} is not a sound SQLite database ({exc})")]
    if problems != ["ok"]:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return [Finding("database", False, f"SQLite quick_check: {problems[0]}{more}")]
    findings = [Finding("database", True, "SQLite quick_check: ok")]
    try:
        settings = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM settings")}
    except (sqlite3.DatabaseError, ValueError) as exc:
        return [*findings, Finding("settings", False, f"settings unreadable ({exc})")]
    missing = [key for key in REQUIRED_SETTINGS if not settings.get(key)]
    if missing:
        return [*findings, Finding("settings", False, f"no {', '.join(missing)} recorded")]
    findings.append(
        Finding(
            "model",
            True,
            f"{settings['model']} (fingerprint {str(settings['fingerprint'])[:12]}), "
            f"dim {settings['dim']}, max {settings['max_length']} tokens",
        )
    )
    width = int(settings["dim"]) * stored_vector_dtype(settings).itemsize
    if isinstance(settings.get("passages"), dict):
        findings.append(_check_passage_rows(conn, width))
    else:
        findings.append(_check_rows(conn, width))
    return findings


def _check_rows(conn: sqlite3.Connection, width: int) -> Finding:
    """Documents and vectors one to one, every vector ``width`` bytes (dim x fp16 or fp32)."""
    try:
        documents = conn.execute("SELECT count(*) FROM documents").fetchone()[0]
        vectors = conn.execute("SELECT count(*) FROM vectors").fetchone()[0]
        no_vector = conn.execute(
            "SELECT count(*) FROM documents WHERE id NOT IN (SELECT id FROM vectors)"
        ).fetchone()[0]
        no_document = conn.execute(
            "SELECT count(*) FROM vectors WHERE id NOT IN (SELECT id FROM documents)"
        ).fetchone()[0]
        bad_size = conn.execute(
            "SELECT count(*) FROM vectors WHERE length(vector) != ?", (width,)
        ).fetchone()[0]
        altered = sum(
            not _text_matches_hash(title, text, content_hash)
            for title, text, content_hash in conn.execute(
                "SELECT title, text, content_hash FROM documents"
            )
        )
    except sqlite3.DatabaseError as exc:
        return Finding("documents", False, f"documents or vectors unreadable ({exc})")
    problems = []
    if no_vector:
        problems.append(f"{no_vector} documents without a vector")
    if no_document:
        problems.append(f"{no_document} vectors without a document")
    if bad_size:
        problems.append(f"{bad_size} vectors of the wrong size")
    if altered:
        problems.append(f"{altered} documents whose text no longer matches its content hash")
    detail = f"{documents} documents, {vectors} vectors"
    if problems:
        return Finding("documents", False, f"{detail}: {'; '.join(problems)}")
    return Finding("documents", True, f"{detail}, one to one")


def _check_passage_rows(conn: sqlite3.Connection, width: int) -> Finding:
    """An index of passages: each document has passages, each passage one vector of ``width``
    bytes and a text as long as its character offsets (damage inside a row)."""
    queries = {
        "documents without passages": "SELECT count(*) FROM documents "
        "WHERE id NOT IN (SELECT document FROM passages)",
        "passages without a document": "SELECT count(*) FROM passages "
        "WHERE document NOT IN (SELECT id FROM documents)",
        "passages without a vector": "SELECT count(*) FROM passages "
        "WHERE id NOT IN (SELECT id FROM vectors)",
        "vectors without a passage": "SELECT count(*) FROM vectors "
        "WHERE id NOT IN (SELECT id FROM passages)",
        "vectors of the wrong size": f"SELECT count(*) FROM vectors WHERE length(vector) != {width}",
        "passages whose text does not fit their offsets": "SELECT count(*) FROM passages "
        "WHERE typeof(text) != 'text' OR length(text) != char_end - char_start",
    }
    try:
        documents = conn.execute("SELECT count(*) FROM documents").fetchone()[0]
        passages = conn.execute("SELECT count(*) FROM passages").fetchone()[0]
        counts = {what: conn.execute(sql).fetchone()[0] for what, sql in queries.items()}
    except sqlite3.DatabaseError as exc:
        return Finding("documents", False, f"documents, passages or vectors unreadable ({exc})")
    problems = [f"{count} {what}" for what, count in counts.items() if count]
    detail = f"{documents} documents, {passages} passages"
    if problems:
        return Finding("documents", False, f"{detail}: {'; '.join(problems)}")
    return Finding("documents", True, f"{detail}, each passage with its vector")


def _text_matches_hash(title: object, text: object, content_hash: object) -> bool:
    """Damage inside a row's payload passes quick_check; the stored content hash does not."""
    if not isinstance(title, str) or not isinstance(text, str):
        return False
    return Document("", "", title, text).content_hash == content_hash


def _check_snapshot(folder: Path, name: str) -> Finding:
    store = Store.open_database(folder, name, quick_check=False)
    try:
        path = store.snapshots.path()
        problem = store.snapshots.problem()
    finally:
        store.close()
    if problem is None:
        return Finding("snapshot", True, f"{path.name} matches its recorded checksum")
    if problem in QUIET_SNAPSHOT_PROBLEMS:
        # A run killed after a commit leaves no snapshot of the last generation: no damage.
        return Finding("snapshot", True, f"{path.name} not written yet (built from SQLite on open)")
    return Finding("snapshot", False, f"{path.name}: {problem}")


def _check_lexical(folder: Path, name: str) -> Finding:
    """The lexical (BM25) index holds exactly the database's documents (or passages) and
    opens cleanly."""
    store = Store.open_database(folder, name, quick_check=False)
    try:
        path = store.lexical.path
        problem = store.lexical.problem()
        keys = store.lexical.keys
    finally:
        store.close()
    if problem is None:
        return Finding("lexical", True, f"{path.name} holds the database's {keys}, one to one")
    if problem == "missing":
        # An index made before the lexical side existed: built from SQLite when first needed.
        return Finding(
            "lexical", True, f"{path.name} not built yet (built from SQLite when needed)"
        )
    return Finding("lexical", False, f"{path.name}: {problem}")


# ----------------------------------------------------------------- repairs
def _repair(folder: Path, report: CheckReport) -> list[str]:
    done: list[str] = []
    failed = {f.check: f for f in report.findings if not f.ok}
    name = report.database
    if name is None:
        raise EngineError(
            f"index at {folder} has no database left to repair; {rebuild_hint(folder)}"
        )
    if {"database", "settings"} & failed.keys():
        if "settings" in failed or not _settings_readable(folder / name):
            raise EngineError(
                f"the database of {folder} has lost its settings and cannot be repaired; "
                f"{rebuild_hint(folder)}"
            )
    if "pointer" in failed:
        write_pointer(folder, name)
        done.append(f"pointed {POINTER} back at {name}")
    if {"database", "documents"} & failed.keys():
        done.append(_salvage(folder, name))
    if "snapshot" in failed and not {"database", "documents"} & failed.keys():
        store = Store.open_database(folder, name, quick_check=False)
        try:
            store.snapshots.rewrite()
            done.append(
                f"rebuilt the FAISS snapshot {store.snapshots.path().name} from the database "
                f"({store.count()} vectors)"
            )
        finally:
            store.close()
    if "lexical" in failed and not {"database", "documents"} & failed.keys():
        store = Store.open_database(folder, name, quick_check=False)
        try:
            index = store.lexical.rebuild()
            done.append(
                f"rebuilt the lexical index {store.lexical.path.name} from the database "
                f"({index.count()} documents)"
            )
        finally:
            store.close()
    return done


def _settings_readable(path: Path) -> bool:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            keys = {row[0] for row in conn.execute("SELECT key FROM settings")}
        finally:
            conn.close()
    except sqlite3.Error:
        return False
    return set(REQUIRED_SETTINGS) <= keys


def _salvage(folder: Path, name: str) -> str:
    """Copy every readable document that has a sound vector into a fresh database and publish it."""
    conn = sqlite3.connect(f"file:{folder / name}?mode=ro", uri=True, timeout=30)
    try:
        settings = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM settings")}
        dtype = stored_vector_dtype(settings)
        width = int(settings["dim"]) * dtype.itemsize
        store = Store.create(
            folder, {k: v for k, v in settings.items() if k not in _HISTORY_SETTINGS}
        )
        dropped = 0
        passages = isinstance(settings.get("passages"), dict)

        def sound_rows() -> Iterator[tuple[dict[str, Any], Any]]:
            nonlocal dropped
            for row in _readable_rows(conn):
                if passages:
                    split = _sound_passages(conn, row[0], width, dtype)
                    if split is None:
                        dropped += 1
                    else:
                        yield dict(zip(_DOCUMENT_COLUMNS, row, strict=True)), split
                    continue
                vector = _vector(conn, row[0])
                if (
                    vector is None
                    or len(vector) != width
                    or not _text_matches_hash(row[3], row[4], row[5])
                ):
                    dropped += 1
                    continue
                yield dict(zip(_DOCUMENT_COLUMNS, row, strict=True)), np.frombuffer(vector, dtype)

        try:
            kept = store.insert_salvaged(sound_rows())
            store.publish()
        finally:
            store.close()
    finally:
        conn.close()
    lost = f"; {dropped} without a sound vector or text left out" if dropped else ""
    return (
        f"salvaged {kept} documents from the damaged {name} into {store.db_name}{lost} "
        "(the next `engine index` run re-encodes whatever is missing)"
    )


def _readable_rows(conn: sqlite3.Connection) -> Iterator[tuple]:
    """Document rows in id order, stepping over rows a damaged page makes unreadable."""
    columns = ", ".join(_DOCUMENT_COLUMNS)
    try:
        top = conn.execute("SELECT max(seq) FROM sqlite_sequence").fetchone()[0] or 0
    except sqlite3.DatabaseError:
        top = 0
    last = 0
    while True:
        try:
            for row in conn.execute(
                f"SELECT {columns} FROM documents WHERE id > ? ORDER BY id", (last,)
            ):
                last = row[0]
                yield row
            return
        except sqlite3.DatabaseError:
            last += 1
            if last > top:
                warn(f"the documents table is unreadable past id {last}; the rest is left out")
                return


def _sound_passages(
    conn: sqlite3.Connection, document: int, width: int, dtype: np.dtype
) -> list[tuple[dict[str, Any], np.ndarray]] | None:
    """A document's passages with their vectors, or None if any is unreadable or damaged."""
    columns = ("id", *PASSAGE_FIELDS, "text")
    try:
        rows = conn.execute(
            f"SELECT {', '.join(columns)} FROM passages WHERE document = ? ORDER BY position",
            (document,),
        ).fetchall()
    except sqlite3.DatabaseError:
        return None
    sound = []
    for row in rows:
        passage = dict(zip(columns, row, strict=True))
        vector = _vector(conn, passage["id"])
        text = passage["text"]
        if vector is None or len(vector) != width or not isinstance(text, str):
            return None
        if len(text) != passage["char_end"] - passage["char_start"]:
            return None
        sound.append((passage, np.frombuffer(vector, dtype)))
    return sound or None


def _vector(conn: sqlite3.Connection, doc_id: int) -> bytes | None:
    try:
        row = conn.execute("SELECT vector FROM vectors WHERE id = ?", (doc_id,)).fetchone()
    except sqlite3.DatabaseError:
        return None
    return None if row is None else bytes(row[0])
