"""Milvus as a second home for an index's vectors: export incrementally, search from there.

An index outgrows one machine long before its encoder does (BEIR with a 4096-dim
model is about 140 GB of fp32 vectors). Milvus serves FAISS-family indexes (HNSW,
IVF, GPU CAGRA on a cluster) and scales out; Milvus Lite speaks the same
``pymilvus`` API from a local ``.db`` folder, which is what the tests use.

The local index stays the source of truth. ``export_index`` mirrors it into one
collection: the primary key is the store's document id (the FAISS id), and each
entity carries the document's id, source, title, text and content hash, so a
re-export upserts only documents whose hash (or id/source) changed and deletes
those gone from the index. The collection's properties hold the model name and
fingerprint, dimension, length and default instruction: a collection made by
another model is refused, and ``engine search --backend`` needs no local index.
Each entity also carries the document's metadata as a JSON field, so a ``--where``
filter is translated (:func:`indexer.filters.milvus_expression`) and applied inside
Milvus's search.
An index of passages exports one entity per passage (its id the passage id), with its
document's fields, the passage's text and its offsets; a search groups them by
document as the local index does.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine import __version__
from engine.errors import EngineError
from engine.progress import progress_bar
from indexer.filters import Condition, milvus_expression
from indexer.folder import utc_now
from indexer.schema import check_compatible
from indexer.store import PASSAGE_FIELDS, Store
from indexer.vector_index import SearchKnobs

DEFAULT_COLLECTION = "engine"
SETTINGS_PROPERTY = "engine.settings"
# Settings of the local index that travel with the collection.
CARRIED_SETTINGS = (
    "model",
    "fingerprint",
    "dim",
    "max_length",
    "profile",
    "default_instruction",
    "metric",
    "passages",
)
TEXT_FIELDS = ("doc_id", "source", "title", "text", "content_hash")
# The document's metadata (JSON), for filters; collections exported before it have none.
METADATA_FIELD = "metadata"
# An index of passages: the store id of the passage's document, and where the passage lies.
PASSAGE_INT_FIELDS = ("document", *PASSAGE_FIELDS)
# Milvus caps a VARCHAR at 65535 bytes; longer values (in practice only texts) are cut.
VARCHAR_BYTES = 65_535
# Rows per upsert: stays well under gRPC's message limit even for 4096-dim vectors.
UPSERT_ROWS = 256
DELETE_IDS = 10_000
CONNECT_SECONDS = 10.0
# Below this many documents `auto` picks exact search (FLAT); above it HNSW.
AUTO_FLAT_DOCUMENTS = 100_000

# --index-type -> (Milvus index type, build params, search params). None: computed.
INDEX_TYPES: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "flat": ("FLAT", {}, {}),
    "hnsw": ("HNSW", {"M": 32, "efConstruction": 200}, {"ef": 128}),
    "ivf": ("IVF_FLAT", {}, {"nprobe": 32}),
    "ivf-sq8": ("IVF_SQ8", {}, {"nprobe": 32}),
    "autoindex": ("AUTOINDEX", {}, {}),
}
INDEX_TYPE_CHOICES = ("auto", *INDEX_TYPES)


@dataclass
class ExportReport:
    """What one export did."""

    upserted: int = 0
    removed: int = 0
    unchanged: int = 0
    total: int = 0
    index_type: str = ""
    created: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "upserted": self.upserted,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "documents": self.total,
            "index_type": self.index_type,
            "created": self.created,
            "seconds": round(self.seconds, 3),
        }


def is_server_uri(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "tcp://", "grpc://", "unix:"))


def connect(uri: str, token: str | None = None, *, create: bool = False):
    """A ``MilvusClient`` for a server address or a Milvus Lite ``.db`` path; one-line errors."""
    if not is_server_uri(uri):
        path = Path(uri)
        if path.suffix != ".db":
            raise EngineError(
                f"Milvus URI {uri!r} is neither a server address (http://host:19530) "
                "nor a Milvus Lite path ending in .db"
            )
        if not create and not path.exists():
            raise EngineError(
                f"no Milvus Lite database at {uri} (run `engine export milvus` first)"
            )
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    # pymilvus logs each failed call with a traceback; the one-line EngineError says it all.
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
    try:
        return MilvusClient(uri=uri, token=token or "", timeout=CONNECT_SECONDS)
    except MilvusException as exc:
        raise EngineError(f"cannot reach Milvus at {uri}: {_message(exc)}") from None


@dataclass(frozen=True)
class MilvusFilter:
    """A ``--where`` filter as a Milvus boolean expression (what the search's ``filter`` takes)."""

    expression: str


class MilvusIndex:
    """One collection written by :func:`export_index`, searchable like a :class:`Store`."""

    def __init__(
        self,
        client,
        uri: str,
        collection: str,
        settings: dict[str, Any],
        has_metadata: bool = True,
    ) -> None:
        self.client = client
        self.uri = uri
        self.collection = collection
        self._settings = settings
        self.has_metadata = has_metadata
        self._rows: dict[int, dict[str, Any]] = {}

    def __str__(self) -> str:
        return f"Milvus collection {self.collection!r} at {self.uri}"

    @classmethod
    def open(
        cls, uri: str, collection: str = DEFAULT_COLLECTION, token: str | None = None
    ) -> MilvusIndex:
        """Open an exported collection for searching; a clear error if it is not one."""
        client = connect(uri, token)
        with milvus_errors(uri):
            if not client.has_collection(collection):
                raise EngineError(
                    f"no collection {collection!r} at {uri} (run `engine export milvus` first)"
                )
            settings = read_settings(client, collection, uri)
            has_metadata = _has_metadata(client, collection)
            client.load_collection(collection)
        return cls(client, uri, collection, settings, has_metadata)

    @property
    def settings(self) -> dict[str, Any]:
        return self._settings

    def count(self) -> int:
        with milvus_errors(self.uri):
            return int(self.client.get_collection_stats(self.collection)["row_count"])

    def info(self) -> dict[str, Any]:
        """What ``engine info`` and the server's /info say of a collection."""
        settings = self._settings
        return {
            "backend": self.uri,
            "collection": self.collection,
            "model": settings["model"],
            "fingerprint": settings["fingerprint"],
            "dim": settings["dim"],
            "max_length": settings["max_length"],
            "index_type": settings.get("index_type"),
            "default_instruction": settings.get("default_instruction"),
            "documents": self.count(),
            "exported": settings.get("exported"),
        }

    def matching(self, condition: Condition, *, vectors: bool = False) -> MilvusFilter:
        """A filter as the expression this collection's search applies (``vectors``: a
        passage entity carries its document's fields, so passages need nothing more)."""
        if not self.has_metadata:
            raise EngineError(
                f"{self} was exported before metadata; --where needs it: "
                "run `engine export milvus --rebuild`"
            )
        return MilvusFilter(milvus_expression(condition, METADATA_FIELD))

    def search(
        self,
        vectors: np.ndarray,
        k: int,
        knobs: SearchKnobs | None = None,
        allowed: MilvusFilter | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, ids) per query, -1 for empty slots, as FAISS returns them.

        ``knobs``: ``nprobe`` for IVF, ``ef_search`` for HNSW (None: the collection's).
        ``allowed``: a filter (:meth:`matching`), applied by Milvus inside the search.
        """
        params = dict(self._settings.get("search_params") or {})
        if knobs is not None and knobs.nprobe is not None and "nprobe" in params:
            params["nprobe"] = knobs.nprobe
        if knobs is not None and knobs.ef_search is not None and "ef" in params:
            params["ef"] = knobs.ef_search
        if "ef" in params:
            params["ef"] = max(params["ef"], k)
        with milvus_errors(self.uri):
            results = self.client.search(
                self.collection,
                data=np.asarray(vectors, dtype=np.float32).tolist(),
                limit=k,
                anns_field="vector",
                output_fields=self._fields(),
                search_params={"metric_type": "IP", "params": params},
                **({"filter": allowed.expression} if allowed is not None else {}),
            )
        scores = np.full((len(vectors), k), -np.inf, dtype=np.float32)
        ids = np.full((len(vectors), k), -1, dtype=np.int64)
        for query, hits in enumerate(results):
            for slot, hit in enumerate(hits):
                ids[query, slot] = int(hit["id"])
                scores[query, slot] = float(hit["distance"])
                self._rows[int(hit["id"])] = {"id": int(hit["id"]), **hit["entity"]}
        return scores, ids

    def get(self, ids: Iterable[int]) -> list[dict[str, Any]]:
        """Document fields for ids, in the order asked (the last search's rows are at hand)."""
        wanted = [int(i) for i in ids]
        missing = [i for i in wanted if i not in self._rows]
        if missing:
            with milvus_errors(self.uri):
                fetched = self.client.get(
                    self.collection, ids=missing, output_fields=["id", *self._fields()]
                )
            for row in fetched:
                self._rows[int(row["id"])] = dict(row)
        return [self._rows[i] for i in wanted if i in self._rows]

    def get_passages(self, ids: Iterable[int]) -> list[dict[str, Any]]:
        """For passage ids, the rows :meth:`indexer.store.Store.get_passages` gives."""
        return [_passage_row(row) for row in self.get(ids)]

    def _fields(self) -> list[str]:
        passages = isinstance(self._settings.get("passages"), dict)
        return [*TEXT_FIELDS, *(PASSAGE_INT_FIELDS if passages else ())]

    def close(self) -> None:
        self.client.close()


def export_index(
    store: Store,
    uri: str,
    *,
    collection: str = DEFAULT_COLLECTION,
    token: str | None = None,
    index_type: str = "auto",
    rebuild: bool = False,
    progress: bool = True,
) -> ExportReport:
    """Mirror ``store`` into a Milvus collection: upsert what changed, delete what is gone.

    ``index_type`` ``auto`` keeps an existing collection's index, and for a new one
    picks exact search (FLAT) below 100k documents and HNSW above. ``rebuild``
    drops the collection first (also one made by another model).
    """
    if index_type not in INDEX_TYPE_CHOICES:
        raise EngineError(
            f"unknown --index-type {index_type!r}; choose one of {', '.join(INDEX_TYPE_CHOICES)}"
        )
    started = time.perf_counter()
    report = ExportReport()
    wanted = {key: store.settings.get(key) for key in CARRIED_SETTINGS}
    client = connect(uri, token, create=True)
    where = f"Milvus collection {collection!r} at {uri}"
    try:
        with milvus_errors(uri):
            if rebuild and client.has_collection(collection):
                client.drop_collection(collection)
            if client.has_collection(collection):
                stored = read_settings(client, collection, uri)
                check_compatible(stored, wanted, where, fix="use --rebuild to replace it")
                client.load_collection(collection)
                if index_type not in ("auto", stored.get("index_type")):
                    stored.update(
                        _replace_index(client, collection, index_type, store.vector_count())
                    )
                report.index_type = stored["index_type"]
                metadata = _has_metadata(client, collection)
                remote = _remote_manifest(client, collection, metadata=metadata)
            else:
                count = store.vector_count()
                chosen = _auto_index_type(count) if index_type == "auto" else index_type
                stored = {
                    **wanted,
                    **_create_collection(client, collection, wanted, chosen, count),
                }
                report.index_type, report.created, remote = chosen, True, {}
                metadata = True
            local = {
                i: (*_fit_all(key[:3]), _metadata_key(key[3]) if metadata else None)
                for i, key in store.vector_keys().items()
            }
            changed = sorted(i for i, key in local.items() if remote.get(i) != key)
            gone = sorted(set(remote) - set(local))
            bar = progress_bar(len(changed), "exporting", enabled=progress)
            for chunk in _chunks(changed, UPSERT_ROWS):
                client.upsert(collection, _entities(store, chunk, metadata=metadata))
                if bar is not None:
                    bar.update(len(chunk))
            if bar is not None:
                bar.close()
            for chunk in _chunks(gone, DELETE_IDS):
                client.delete(collection, ids=chunk)
            stored.update(
                default_instruction=wanted["default_instruction"],
                engine_version=__version__,
                exported=utc_now(),
                source_index=str(Path(store.folder).resolve()),
            )
            write_settings(client, collection, stored)
            client.flush(collection)
            report.upserted, report.removed = len(changed), len(gone)
            report.unchanged = len(local) - len(changed)
            report.total = int(client.get_collection_stats(collection)["row_count"])
    finally:
        client.close()
    report.seconds = time.perf_counter() - started
    return report


def read_settings(client, collection: str, uri: str) -> dict[str, Any]:
    properties = client.describe_collection(collection).get("properties") or {}
    if SETTINGS_PROPERTY not in properties:
        raise EngineError(
            f"collection {collection!r} at {uri} was not written by `engine export milvus` "
            "(use another --collection, or --rebuild to replace it)"
        )
    return json.loads(properties[SETTINGS_PROPERTY])


def write_settings(client, collection: str, settings: dict[str, Any]) -> None:
    client.alter_collection_properties(
        collection, properties={SETTINGS_PROPERTY: json.dumps(settings)}
    )


@contextmanager
def milvus_errors(uri: str) -> Iterator[None]:
    """Turn a Milvus failure into a one-line :class:`EngineError`."""
    from pymilvus.exceptions import MilvusException

    try:
        yield
    except MilvusException as exc:
        raise EngineError(f"Milvus at {uri}: {_message(exc)}") from None


def _message(exc: Exception) -> str:
    return str(getattr(exc, "message", "") or exc).splitlines()[0]


def _auto_index_type(documents: int) -> str:
    return "flat" if documents < AUTO_FLAT_DOCUMENTS else "hnsw"


def _index_params(client, index_type: str, documents: int):
    milvus_type, build, search = INDEX_TYPES[index_type]
    if milvus_type.startswith("IVF"):
        # The usual rule of thumb: about 4 * sqrt(n) lists.
        build = {"nlist": int(min(65_536, max(16, 4 * math.sqrt(max(documents, 1)))))}
    params = client.prepare_index_params()
    params.add_index(field_name="vector", index_type=milvus_type, metric_type="IP", params=build)
    return params, {"index_type": index_type, "index_params": build, "search_params": search}


def _create_collection(
    client, collection: str, settings: dict[str, Any], index_type: str, documents: int
) -> dict[str, Any]:
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(settings["dim"]))
    for name in TEXT_FIELDS:
        schema.add_field(name, DataType.VARCHAR, max_length=VARCHAR_BYTES)
    schema.add_field(METADATA_FIELD, DataType.JSON)
    if isinstance(settings.get("passages"), dict):
        for name in PASSAGE_INT_FIELDS:
            schema.add_field(name, DataType.INT64)
    params, chosen = _index_params(client, index_type, documents)
    client.create_collection(
        collection, schema=schema, index_params=params, consistency_level="Strong"
    )
    write_settings(client, collection, {**settings, **chosen})
    return chosen


def _replace_index(client, collection: str, index_type: str, documents: int) -> dict[str, Any]:
    """Swap the vector index of an existing collection (the data stays)."""
    params, chosen = _index_params(client, index_type, documents)
    client.release_collection(collection)
    for name in client.list_indexes(collection):
        client.drop_index(collection, name)
    client.create_index(collection, params)
    client.load_collection(collection)
    return chosen


def _remote_manifest(
    client, collection: str, *, metadata: bool
) -> dict[int, tuple[str, str, str, str | None]]:
    """id -> (doc id, source, content hash, metadata key or None) of every entity in the
    collection: an entity whose document's metadata alone changed is exported again."""
    manifest = {}
    fields = ["doc_id", "source", "content_hash", *([METADATA_FIELD] if metadata else [])]
    iterator = client.query_iterator(collection, batch_size=4096, output_fields=fields)
    try:
        while batch := iterator.next():
            for row in batch:
                manifest[int(row["id"])] = (
                    row["doc_id"],
                    row["source"],
                    row["content_hash"],
                    _metadata_key(row.get(METADATA_FIELD)) if metadata else None,
                )
    finally:
        iterator.close()
    return manifest


def _metadata_key(metadata: str | dict | None) -> str:
    """Metadata (stored JSON text, or the dict Milvus gives back) in one canonical form."""
    value = json.loads(metadata) if isinstance(metadata, str) else metadata
    return json.dumps(value or {}, sort_keys=True)


def _has_metadata(client, collection: str) -> bool:
    """Whether the collection has the metadata field (exported since filters came)."""
    fields = client.describe_collection(collection).get("fields") or []
    return any(field.get("name") == METADATA_FIELD for field in fields)


def _entities(store: Store, ids: Sequence[int], *, metadata: bool) -> list[dict[str, Any]]:
    """The entities of these vector ids: a document's fields, or a passage's (its text and
    offsets, with its document's fields); ``metadata``: with the document's metadata."""
    if store.has_passages:
        rows = {}
        for row in store.get_passages(ids):
            passage = row["passage"]
            rows[passage["id"]] = {
                **row,
                "text": passage["text"],
                "document": row["id"],
                **{name: passage[name] for name in PASSAGE_FIELDS},
            }
        ints = PASSAGE_INT_FIELDS
    else:
        rows, ints = {row["id"]: row for row in store.get(ids)}, ()
    vectors = store.vectors(ids)
    return [
        {
            "id": int(i),
            "vector": vector.tolist(),
            **{name: _fit(str(rows[i][name])) for name in TEXT_FIELDS},
            **{name: int(rows[i][name]) for name in ints},
            **({METADATA_FIELD: json.loads(rows[i]["metadata"])} if metadata else {}),
        }
        for i, vector in zip(ids, vectors, strict=True)
    ]


def _passage_row(entity: dict[str, Any]) -> dict[str, Any]:
    """A passage entity as a document row with its ``passage`` (as the store gives it)."""
    passage = {name: int(entity[name]) for name in PASSAGE_FIELDS}
    passage.update(text=entity["text"], id=int(entity["id"]))
    row = {name: entity[name] for name in TEXT_FIELDS if name != "text"}
    return {**row, "id": int(entity["document"]), "text": entity["text"], "passage": passage}


def _fit(value: str) -> str:
    """Cut a string to what a Milvus VARCHAR holds (bytes, on a character boundary)."""
    data = value.encode("utf-8")
    if len(data) <= VARCHAR_BYTES:
        return value
    return data[:VARCHAR_BYTES].decode("utf-8", errors="ignore")


def _fit_all(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(_fit(v) for v in values)


def _chunks(items: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
