"""The Python API: ``from engine import Index``.

One object for an index folder: create or open it, add, upsert and delete documents
given as Python objects, index a folder, search (dense, lexical or hybrid, filtered with
``where``), describe and check it. It sits above :mod:`indexer` and below the app (CLI,
server); the model loads on first need (a lexical search or ``info()`` loads none)::

    from engine import Document, Index

    with Index.create("./my-index", model="all-MiniLM-L6-v2", index_type="flat") as index:
        index.add([Document("a", "Photosynthesis makes sugar.", metadata={"year": 2021})])
        hits = index.search("how do plants make sugar", k=5, where="year >= 2020")
        print(hits[0].doc_id, hits[0].score)
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import EngineError
from engine.text import repair_text
from indexer.documents import CorpusScan, read_corpus
from indexer.documents import Document as StoredDocument
from indexer.filters import Condition
from indexer.folder import reporting_damage
from indexer.fusion import Fusion
from indexer.info import index_info
from indexer.integrity import CheckReport, check_index
from indexer.search import (
    Hit,
    SearchIndex,
    load_encoder_for,
    resolve_fusion,
    resolve_instruction,
    resolve_mode,
    search_queries,
)
from indexer.store import Store, Writer, read_index_settings
from indexer.vector_index import validate_type

if TYPE_CHECKING:  # torch is imported when a model is needed, not with the API
    import numpy as np

    from engine.encoder import Encoder
    from indexer.indexing import IndexReport
    from indexer.milvus import ExportReport, MilvusIndex

__all__ = ["CheckReport", "Document", "FolderReport", "Hit", "Index"]


@dataclass(frozen=True)
class Document:
    """A document given from Python: ``id`` unique within its ``source`` (default ``""``:
    documents added from Python, which a later ``index_folder`` keeps), ``metadata`` scalar
    fields for ``where`` filters."""

    id: str
    text: str
    title: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""


DocumentLike = Document | Mapping[str, Any]


@dataclass(frozen=True)
class FolderReport:
    """What :meth:`Index.index_folder` did: the indexing run (its fields, ``added``,
    ``total``..., read through), the corpus as read (skipped files, parser notes) and the
    model, length and passage setting the index was made with."""

    report: IndexReport
    scan: CorpusScan
    model: str
    max_length: int
    passage_setting: dict[str, int] | None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.report, name)

    def to_dict(self) -> dict[str, Any]:
        """What ``engine index --json`` prints after the index and corpus paths."""
        scan = self.scan
        return {
            "model": self.model,
            "max_length": self.max_length,
            "passage_setting": self.passage_setting,
            **self.report.to_dict(),
            "skipped": len(scan.skipped),
            "ignored_files": scan.ignored,
            "skipped_detail": [{"source": s.source, "reason": s.reason} for s in scan.skipped],
            "notes": [{"source": n.source, "message": n.message} for n in scan.notes],
        }


class Index:
    """An index folder, open for searching and changing. Use :meth:`open` or :meth:`create`
    (:meth:`open_milvus`: a Milvus collection, for searching); ``Index(path)`` itself checks
    nothing, for a folder that may hold no index yet (``engine index`` and ``engine check``
    start there). A context manager (``with``) closes it."""

    def __init__(
        self,
        path: str | Path,
        *,
        model: str | None = None,
        device: str | None = None,
        pinned: bool = False,
    ):
        self.path = Path(path)
        self._model = model
        self._device = device
        self._pinned = pinned
        self._index_type: str | None = None
        self._encoder: Encoder | None = None
        self._store: Store | None = None
        self._milvus: MilvusIndex | None = None

    # ------------------------------------------------------------ opening
    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        model: str | None = None,
        device: str | None = None,
        pinned: bool = False,
    ) -> Index:
        """An existing index (EngineError when there is none at ``path``). ``model``: where
        to load the index's model from (another model is refused); None: as recorded.

        Reads follow each publish of ``engine index`` (the next read after one sees the new
        generation) unless ``pinned``: then they see the generation published when it was
        opened, in one SQLite read transaction with the FAISS snapshot read into memory
        and verified, so a running ``engine index``'s checkpoints and a snapshot file
        changed under it cannot change answers (``engine serve`` reopens one per publish).
        """
        index = cls(path, model=model, device=device, pinned=pinned)
        with reporting_damage(index.path):
            index.store  # noqa: B018 - fails now, not at the first search, when there is no index
        return index

    @classmethod
    def open_milvus(
        cls,
        uri: str,
        collection: str = "engine",
        token: str | None = None,
        *,
        model: str | None = None,
        device: str | None = None,
    ) -> Index:
        """A Milvus collection written by ``engine export milvus`` (a Milvus Lite file or
        ``http://host:19530``), for :meth:`search` and :meth:`info` (dense only)."""
        from indexer.milvus import MilvusIndex

        return cls.on_milvus(MilvusIndex.open(uri, collection, token), model=model, device=device)

    @classmethod
    def on_milvus(
        cls, backend: MilvusIndex, *, model: str | None = None, device: str | None = None
    ) -> Index:
        """:meth:`open_milvus` for a collection already opened (``engine serve --backend``)."""
        index = cls(backend.uri, model=model, device=device)
        index._milvus = backend
        return index

    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        model: str | None = None,
        index_type: str | None = None,
        device: str | None = None,
    ) -> Index:
        """A new index at ``path`` (refused when one is there), made at the first ``add``.
        ``model``: a model name or folder (None: the default); ``index_type`` as
        ``engine index --index-type`` (None: auto)."""
        if read_index_settings(Path(path)) is not None:
            raise EngineError(f"an index already exists at {path}; use Index.open")
        index = cls(path, model=model, device=device)
        index._index_type = validate_type(index_type) if index_type else None
        return index

    @property
    def store(self) -> Store:
        """The index folder's store as last published (reopened after a publish)."""
        folder = self._folder()
        if self._store is None or not (self._pinned or self._store.is_current):
            if self._store is not None:
                self._store.close()
            self._store = _pinned_store(folder) if self._pinned else Store.open(folder)
        return self._store

    def _folder(self) -> Path:
        """The index folder, for anything but searching (a Milvus collection is refused)."""
        if self._milvus is not None:
            raise EngineError(f"{self._milvus} is searched only; change the index it came from")
        return self.path

    @property
    def generation(self) -> int | None:
        """The published generation reads see (None: a Milvus collection)."""
        return None if self._milvus is not None else self.store.generation

    @property
    def encoder(self) -> Encoder:
        """The index's model, loaded on first need."""
        if self._encoder is None:
            from indexer.indexing import model_for_index

            if self._milvus is not None or read_index_settings(self.path) is not None:
                self._encoder = load_encoder_for(self._searched, self._model, self._device)
            else:
                model, length = model_for_index(self.path, self._model, None)
                self._encoder = _load_encoder(model, length, self._device)
        return self._encoder

    @property
    def _searched(self) -> SearchIndex:
        """Where searches go: the Milvus collection, or the store."""
        return self._milvus if self._milvus is not None else self.store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._milvus is not None:
            self._milvus.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------ changing
    def add(self, documents: Iterable[DocumentLike]) -> IndexReport:
        """Add documents (new ids; an id already there is updated, as by :meth:`upsert`)."""
        return self.upsert(documents)

    def upsert(self, documents: Iterable[DocumentLike]) -> IndexReport:
        """Add new documents and replace changed ones (by ``(source, id)``); unchanged ones
        are not re-encoded, documents not given are kept. An index of passages splits them
        as its setting says."""
        from indexer.indexing import passages_for_index, update_index
        from indexer.passages import PassageSpec

        folder = self._folder()
        stored = [_stored(doc) for doc in documents]
        setting = passages_for_index(folder, None)
        report = update_index(
            folder,
            self.encoder,
            stored,
            index_type=self._index_type,
            progress=False,
            passages=PassageSpec(**setting) if setting else None,
            remove_missing=False,
        )
        self._index_type = None
        self.close()  # reopened at the next read: the new generation
        return report

    def index_folder(
        self,
        folder: str | Path,
        *,
        rebuild: bool = False,
        max_length: int | None = None,
        default_instruction: str | None = None,
        passages: int | None = None,
        passage_overlap: int | None = None,
        max_document_tokens: int | None = None,
        index_type: str | None = None,
        batch_tokens: int | None = None,
        precision: str | None = None,
        runtime: str | None = None,
        progress: bool = False,
    ) -> FolderReport | None:
        """Index the files under ``folder`` (or one file) as ``engine index`` does, which
        calls this: new and changed files encoded, files gone removed; documents added from
        Python are kept. Options as ``engine index``'s: ``rebuild`` starts over;
        ``max_length`` tokens per document; ``default_instruction`` stored for searches;
        ``passages`` tokens per window (``passage_overlap``, ``max_document_tokens``: see
        :func:`indexer.passages.passage_spec`); ``index_type`` (None: keep the index's);
        ``batch_tokens``, ``precision`` and ``runtime`` of the encoder; ``progress`` bars
        on stderr.

        Under ``torchrun`` every rank calls this: the ranks encode, rank 0 alone reads and
        writes and gets the report; the others get None.
        """
        from indexer.distributed import IndexingGroup
        from indexer.indexing import model_for_index, passages_for_index, update_index
        from indexer.passages import PassageSpec, passage_spec

        folder, path = Path(folder), self._folder()
        index_type = index_type or self._index_type

        def decide() -> tuple[str | None, int | None, dict | None]:
            """Checked on the writer (rank 0) before any rank loads a model."""
            if not folder.exists():
                raise EngineError(f"corpus not found: {folder}")
            if index_type is not None:
                validate_type(index_type)
            asked = passage_spec(passages, passage_overlap, max_document_tokens)
            setting = passages_for_index(path, asked, rebuild=rebuild)
            return (*model_for_index(path, self._model, max_length, rebuild=rebuild), setting)

        with IndexingGroup() as group:
            model, length, setting = group.writer_decides(decide)
            # The model already loaded serves unless the run asks for other settings.
            asked = rebuild or max_length or batch_tokens or precision or runtime or group.world > 1
            if self._encoder is None or asked:
                self._encoder = _load_encoder(
                    model, length, group.device(self._device), batch_tokens, precision, runtime
                )
            encoder = self._encoder
            if not group.is_writer:
                group.encode_for_writer(encoder)
                return None
            spec = PassageSpec(**setting) if setting else None
            scan = read_corpus(  # lazy: read as indexed; passages: streamed whole
                folder,
                max_tokens=spec.max_document_tokens if spec else encoder.max_length,
                whole=spec is not None,
            )
            report = update_index(
                path,
                encoder,
                scan,
                rebuild=rebuild,
                default_instruction=default_instruction,
                keep_sources={""} | scan.failed_sources,
                index_type=validate_type(index_type) if index_type is not None else None,
                progress=progress,
                passages=spec,
                group=group,
            )
        report.kept_sources = [source for source in report.kept_sources if source]
        self._index_type = None
        self.close()  # reopened at the next read: the new generation
        return FolderReport(report, scan, encoder.name, encoder.max_length, setting)

    def delete(self, ids: Iterable[str], *, source: str = "") -> int:
        """Remove the documents with these ids (in ``source``); returns how many were found."""
        wanted = {(source, str(i)) for i in ids}
        with Writer(self.path, self.store.settings, rebuild=False) as writer:
            writer.load_faiss()
            found = [doc.id for key, doc in writer.existing().items() if key in wanted]
            writer.commit(remove=found)
        self.close()  # reopened at the next read: the new generation
        return len(found)

    # ------------------------------------------------------------ reading
    def search(
        self,
        query: str | Sequence[str],
        k: int = 10,
        *,
        instruct: str | None = None,
        no_instruct: bool = False,
        mode: str | None = None,
        where: str | Condition | None = None,
        fusion: str | Fusion | None = None,
        alpha: float | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
        embeddings: np.ndarray | None = None,
    ) -> list[Hit] | list[list[Hit]]:
        """Top-``k`` hits for ``query`` (a list of :class:`Hit`), or for each of ``queries``
        (a list of lists). ``instruct``: the query instruction (None: the index's default,
        ``no_instruct``: none); ``mode``: dense, lexical or hybrid (None: the default);
        ``where``: a filter in the ``--where`` language (or a parsed one), applied inside
        the search; ``fusion``: rrf or weighted (``alpha``: the dense side's weight), or a
        :class:`~indexer.fusion.Fusion`. ``embeddings``: the queries' embeddings, one row
        each, when already made (``engine serve`` embeds many requests at once); the
        instruction is then theirs. A lexical search loads no model."""
        queries = [query] if isinstance(query, str) else list(query)
        searched = self._searched
        # Checked before the model loads: a refusal costs nothing.
        mode = resolve_mode(searched, mode)
        fused = fusion if isinstance(fusion, Fusion) else resolve_fusion(fusion, alpha)
        embed = mode != "lexical" and embeddings is None
        found = search_queries(
            searched,
            queries,
            k=k,
            instruction=self.instruction_for(instruct, no_instruct, mode) if embed else None,
            encoder=self.encoder if embed else None,
            vectors=embeddings,
            nprobe=nprobe,
            ef_search=ef_search,
            mode=mode,
            fusion=fused,
            where=where,
        )
        return found[0] if isinstance(query, str) else found

    def mode_for(self, mode: str | None = None) -> str:
        """The mode a :meth:`search` asking for ``mode`` runs in (None: the default; refused
        in one line where the index cannot: lexical or hybrid on a Milvus collection)."""
        return resolve_mode(self._searched, mode)

    def instruction_for(
        self, instruct: str | None = None, no_instruct: bool = False, mode: str | None = None
    ) -> str | None:
        """The instruction a :meth:`search` with these arguments embeds its queries with:
        the one asked for, none (``no_instruct`` or ``""``), else the index's default; none
        in lexical mode (no query is embedded). Asking for one and none is refused."""
        instruction = resolve_instruction(self._searched, instruct, no_instruct)
        return None if self.mode_for(mode) == "lexical" else instruction

    def export_milvus(
        self,
        uri: str,
        collection: str = "engine",
        *,
        token: str | None = None,
        index_type: str = "auto",
        rebuild: bool = False,
        progress: bool = False,
    ) -> ExportReport:
        """Mirror the index into a Milvus collection as ``engine export milvus`` does (which
        calls this): changed documents upserted, removed ones deleted; ``index_type`` auto
        keeps the collection's (new: exact below 100k documents, HNSW above)."""
        from indexer.milvus import export_index

        return export_index(
            self.store,
            uri,
            collection=collection,
            token=token,
            index_type=index_type,
            rebuild=rebuild,
            progress=progress,
        )

    def info(self) -> dict[str, Any]:
        """What ``engine info`` prints: model, type, counts, size, dates (a Milvus
        collection: model, type, documents, when exported)."""
        if self._milvus is not None:
            return self._milvus.info()
        with reporting_damage(self.path):
            return index_info(self.store, self.path)

    def count(self) -> int:
        """Documents in the index."""
        return self._searched.count()

    def check(self, *, repair: bool = False) -> CheckReport:
        """What ``engine check`` does: verify (``repair``: and rebuild what is damaged)."""
        folder = self._folder()
        self.close()
        with reporting_damage(folder):
            return check_index(folder, repair=repair)

    def drop(self) -> None:
        """Delete the index folder and everything in it."""
        folder = self._folder()
        self.close()
        shutil.rmtree(folder, ignore_errors=True)


def _pinned_store(path: Path) -> Store:
    """The store as published now, read in one transaction, its snapshot verified in memory."""
    store = Store.open(path)
    try:
        try:  # in step on disk first: a store holding a read snapshot never writes
            store.lexical.load()
        except EngineError:
            pass  # a running `engine index` builds it; searched in memory meanwhile
        # One read transaction from now on: checkpoints a running `engine index` commits
        # stay invisible (WAL keeps this snapshot).
        store.hold_read_snapshot()
        store.snapshots.in_memory = True  # never a mapped file that can change under us
        store.load_faiss()
    except BaseException:
        store.close()
        raise
    return store


def _load_encoder(
    model: str | None,
    length: int | None,
    device: str | None,
    batch_tokens: int | None = None,
    precision: str | None = None,
    runtime: str | None = None,
) -> Encoder:
    """A model to index with, ``length`` tokens per document (None: the encoder's default)."""
    from engine.encoder import Encoder, document_tokens

    encoder = Encoder.load(
        model, device=device, batch_tokens=batch_tokens, precision=precision, runtime=runtime
    )
    encoder.set_max_length(document_tokens(encoder, length))
    return encoder


def _stored(doc: DocumentLike) -> StoredDocument:
    """A Python document as the indexer's: checked, with its metadata."""
    if isinstance(doc, Mapping):
        unknown = set(doc) - {"id", "text", "title", "metadata", "source"}
        if unknown:
            raise EngineError(f"unknown document fields: {', '.join(sorted(unknown))}")
        try:
            doc = Document(**doc)
        except TypeError as exc:
            raise EngineError(f"a document needs 'id' and 'text': {exc}") from None
    if not isinstance(doc.text, str) or not isinstance(doc.title, str):
        raise EngineError(f"document {doc.id!r}: text and title must be strings")
    if not doc.text.strip() and not doc.title.strip():
        raise EngineError(f"document {doc.id!r} is empty")
    metadata = dict(doc.metadata)
    for key, value in metadata.items():
        if not isinstance(value, (str, int, float, bool)) and value is not None:
            raise EngineError(f"document {doc.id!r}: metadata {key!r} is not a scalar")
    return StoredDocument(
        doc_id=repair_text(str(doc.id)),
        source=doc.source,
        title=repair_text(doc.title.strip()),
        text=repair_text(doc.text.strip()),
        metadata=metadata,
    )
