"""The SQLite schema of an index database: numbered migrations, connecting, checks, settings.

Vectors live in SQLite as fp16 (half the size of fp32; nDCG@10 within 0.001, see
bench/results/README.md). ``PRAGMA user_version`` records the last migration
applied; a database from a newer engine is refused, never changed.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import sqlite_utils

from engine import __version__
from engine.errors import EngineError
from indexer.folder import rebuild_hint, repair_hint

# PRAGMA quick_check reads the whole file: done on open up to this size, always by `engine check`.
QUICK_CHECK_MAX_BYTES = 512 * 2**20
# SQLite page size of new databases. A 384-d fp16 vector row takes ~780 bytes: a 4 KiB page holds
# 5 of them and wastes ~5% (820 bytes a vector), a 16 KiB page 21 (~780 bytes). Existing databases
# keep their page size (a physical layout, not the schema: nothing to migrate).
PAGE_SIZE = 16384
# Settings every index has; without them the database cannot be used or repaired.
REQUIRED_SETTINGS = ("model", "fingerprint", "dim", "max_length")


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


def _m003_passages(db: sqlite_utils.Database) -> None:
    """Passages (``engine index --passages``): in such an index the vectors and FAISS ids are
    passages', each row naming its document and where in it the passage lies."""
    db.execute(
        """
        CREATE TABLE passages (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            document INTEGER NOT NULL REFERENCES documents(id),
            position INTEGER NOT NULL,
            token_start INTEGER NOT NULL,
            token_end INTEGER NOT NULL,
            char_start INTEGER NOT NULL,
            char_end INTEGER NOT NULL,
            text TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE UNIQUE INDEX passages_document ON passages (document, position)")


def _m004_metadata(db: sqlite_utils.Database) -> None:
    """Each document's metadata as JSON, for filters (``--where``). Existing documents get
    what their source path tells (the extension); the next indexing run of a changed
    document stores the rest (size, modified time, a JSON record's extra fields)."""
    db.execute("ALTER TABLE documents ADD COLUMN metadata TEXT NOT NULL DEFAULT '{}'")
    sources = [row[0] for row in db.execute("SELECT DISTINCT source FROM documents")]
    db.conn.executemany(
        "UPDATE documents SET metadata = ? WHERE source = ?",
        [(json.dumps({"extension": PurePosixPath(s).suffix.lower()}), s) for s in sources],
    )


# A document's metadata fields as rows, for filters. json_each gives true/false as 1/0 and
# an object or array as its JSON text, as json_extract does; null is no value.
_METADATA_ROWS = (
    "SELECT {columns} FROM {documents}json_each("
    "CASE WHEN json_valid({metadata}) THEN {metadata} ELSE '{{}}' END) WHERE type != 'null'"
)


def _m005_metadata_values(db: sqlite_utils.Database) -> None:
    """Metadata fields one row each, keyed (key, value, document), so a filter reads the
    rows it matches instead of every document's JSON. Triggers keep the rows in step with
    the documents inside the same transaction (insert, delete, a changed metadata); a
    delete removes exactly the rows its JSON made, found by the key. The columns are
    declared in the key's order: SQLite 3.40's quick_check misreads the NOT NULL columns
    of a WITHOUT ROWID table declared in another order."""
    db.execute(
        """
        CREATE TABLE metadata_values (
            key TEXT NOT NULL,
            value NOT NULL,
            document INTEGER NOT NULL,
            PRIMARY KEY (key, value, document)
        ) WITHOUT ROWID
        """
    )

    def insert(row: str, documents: str = "") -> str:
        rows = _METADATA_ROWS.format(
            columns=f"{row}.id, key, value", documents=documents, metadata=f"{row}.metadata"
        )
        return f"INSERT OR IGNORE INTO metadata_values (document, key, value) {rows}"

    def delete(row: str) -> str:
        rows = _METADATA_ROWS.format(
            columns=f"key, value, {row}.id", documents="", metadata=f"{row}.metadata"
        )
        return f"DELETE FROM metadata_values WHERE (key, value, document) IN ({rows})"

    db.execute(insert("documents", documents="documents, "))
    db.execute(
        f"CREATE TRIGGER metadata_values_insert AFTER INSERT ON documents BEGIN {insert('new')}; END"
    )
    db.execute(
        f"CREATE TRIGGER metadata_values_delete AFTER DELETE ON documents BEGIN {delete('old')}; END"
    )
    db.execute(
        "CREATE TRIGGER metadata_values_update AFTER UPDATE OF metadata ON documents BEGIN "
        f"{delete('old')}; {insert('new')}; END"
    )


MIGRATIONS = (
    _m001_initial,
    _m002_fp16_vectors,
    _m003_passages,
    _m004_metadata,
    _m005_metadata_values,
)


def migrate(db: sqlite_utils.Database) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
        with db.atomic():
            migration(db)
            db.execute(f"PRAGMA user_version = {number}")


def connect(path: Path) -> sqlite_utils.Database:
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


def check_and_migrate(db: sqlite_utils.Database, folder: Path, *, quick_check: bool) -> None:
    """Refuse a database this engine cannot use (one line naming the fix), else migrate it."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise EngineError(f"index at {folder} was made by a newer engine; upgrade engine")
    if version == 0:
        raise EngineError(f"index database at {folder} has no index in it; {rebuild_hint(folder)}")
    if quick_check:
        problems = quick_check_problems(db)
        if problems:
            raise EngineError(
                f"index database at {folder} is damaged ({problems[0]}); {repair_hint(folder)}"
            )
    migrate(db)
    missing = [key for key in REQUIRED_SETTINGS if key not in read_settings(db)]
    if missing:
        raise EngineError(
            f"index database at {folder} lacks its settings ({', '.join(missing)}); "
            f"{rebuild_hint(folder)}"
        )


def quick_check_problems(db: sqlite_utils.Database) -> list[str]:
    """What SQLite's quick_check finds wrong (structure, not content); empty when sound."""
    rows = [row[0] for row in db.execute("PRAGMA quick_check").fetchall()]
    return [] if rows == ["ok"] else rows


def read_settings(db: sqlite_utils.Database) -> dict[str, Any]:
    rows = db.execute("SELECT key, value FROM settings").fetchall()
    return {key: json.loads(value) for key, value in rows}


def put_settings(db: sqlite_utils.Database, values: dict[str, Any]) -> None:
    """Upsert settings inside the caller's transaction."""
    db["settings"].upsert_all(
        [{"key": k, "value": json.dumps(v)} for k, v in values.items()], pk="key"
    )


def stored_vector_dtype(settings: dict[str, Any]) -> np.dtype:
    """How vectors are stored in SQLite: fp16 since migration 2, fp32 before."""
    return np.dtype(settings.get("vector_dtype", "float32"))


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
    # Passages are chosen when indexing; a search encoder does not say.
    if "passages" in wanted and stored.get("passages") != wanted["passages"]:
        raise EngineError(
            f"{where} has passages={_passages_text(stored.get('passages'))}, "
            f"not {_passages_text(wanted['passages'])}; {fix}"
        )


def _passages_text(value: Any) -> str:
    if not isinstance(value, dict):
        return "off (the first max_length tokens)"
    return (
        f"{value.get('tokens')} tokens (overlap {value.get('overlap')}, at most "
        f"{value.get('max_document_tokens')} a document)"
    )


def new_index_settings(
    describe: dict[str, Any],
    default_instruction: str | None,
    index_type: str | None = None,
    passages: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Settings stored with a new index (from the encoder's description).

    ``index_type`` None keeps an existing index's type (``auto`` for a new one);
    ``passages`` (:meth:`indexer.passages.PassageSpec.to_settings`) None: whole
    documents cut at max_length.
    """
    return {
        **describe,
        "engine_version": __version__,
        "metric": "inner_product",
        "default_instruction": default_instruction,
        "index_type": index_type,
        "passages": passages,
    }
