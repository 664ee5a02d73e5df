"""`engine serve`: the encoder and the index stay loaded and answer over HTTP.

One :class:`Batcher` thread owns the encoder and the index. Requests queue jobs
for it; it takes every job waiting (and those arriving within ``batch_wait``),
embeds their texts together in as few forward passes as the encoder's token
budget allows, then answers each job: vectors for ``/v1/embeddings``, hits from
:func:`indexer.search.hits_for` for ``/search``. Keeping SQLite, FAISS and the
tokenizer on one thread also keeps them out of each other's way.

Before a batch that searches, :class:`ServedIndex` checks (one ``stat``) whether
``engine index`` published since: every publish atomically replaces the
``CURRENT`` pointer, so a new pointer file means a complete new generation, and
the store is reopened from it. Checkpoints a running ``engine index`` commits
before it publishes stay invisible: the server reads the store in one SQLite read
transaction (a WAL snapshot) from one publish to the next.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from bench.datasets import INSTRUCTIONS
from engine import __version__
from engine.encoder import Encoder
from engine.errors import EngineError
from indexer.folder import POINTER
from indexer.info import index_info
from indexer.milvus import MilvusIndex
from indexer.schema import check_compatible
from indexer.search import Hit, check_queries, hits_for, resolve_instruction
from indexer.store import Store
from indexer.vector_index import SearchKnobs

log = logging.getLogger("engine.server")

STATIC_DIR = Path(__file__).parent / "static"
# The one route reachable without the API key: liveness, for load balancers and probes.
OPEN_PATHS = ("/health",)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; beyond it the answer is a 4xx, never a 500."""

    max_query_chars: int = 2048
    max_input_chars: int = 100_000  # one /v1/embeddings input (a document)
    max_inputs: int = 256  # queries or embedding inputs per request
    max_k: int = 1000
    max_nprobe: int = 65_536  # IVF lists scanned per query (nlist is ~2 sqrt(n))
    max_ef_search: int = 4096  # HNSW candidates per query
    max_body_bytes: int = 4 * 2**20
    queue_size: int = 512  # jobs waiting for the encoder; beyond it 503 + Retry-After
    batch_wait: float = 0.002  # seconds a batch waits for more requests to join it


class ApiError(HTTPException):
    """An HTTP error answered as one line of JSON."""


class Overloaded(ApiError):
    def __init__(self) -> None:
        super().__init__(503, "server busy: too many requests waiting", {"Retry-After": "1"})


# ------------------------------------------------------------------ the index
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
            store.db.execute("BEGIN")
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


# ---------------------------------------------------------------- batching
@dataclass
class Job:
    """Texts to embed (queries or documents) and what to answer with them."""

    side: Literal["query", "document"] = "query"
    texts: Sequence[str] = ()
    instruction: str | None = None  # queries
    titles: Sequence[str] | None = None  # documents
    k: int | None = None  # a search: answer hits, not vectors
    no_instruct: bool = False  # a search: not even the index's default instruction
    knobs: SearchKnobs = SearchKnobs()  # a search: nprobe (IVF), ef_search (HNSW)
    call: Callable[[ServedIndex], Any] | None = None  # work on the index, no encoding
    future: Future = field(default_factory=Future)


@dataclass
class Embedded:
    vectors: np.ndarray
    tokens: int


@dataclass
class Searched:
    hits: list[list[Hit]]
    instruction: str | None
    generation: int | None


class Batcher:
    """The one thread that embeds and searches; requests wait on futures."""

    def __init__(self, index: ServedIndex | ServedMilvus, encoder: Encoder, limits: Limits) -> None:
        self.encoder = encoder
        self.limits = limits
        self.index = index
        self.forward_passes = 0
        self.batches = 0
        # Requests for the encoder the HTTP side has accepted and not yet answered (changed
        # on the event loop only): a batch waits for stragglers only while some are coming.
        self.requests_in_flight = 0
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=limits.queue_size)
        self._stopping = threading.Event()
        self._ready: Future = Future()
        self._thread = threading.Thread(target=self._run, name="engine-batcher", daemon=True)

    def start(self) -> None:
        """Start the thread and wait until it has opened the index (its errors raise here)."""
        self._thread.start()
        self._ready.result()

    def stop(self) -> None:
        self._stopping.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass  # the thread sees the flag after its batch
        self._thread.join(timeout=60)

    def submit(self, job: Job) -> Future:
        if self._stopping.is_set():
            raise ApiError(503, "server is shutting down")
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise Overloaded() from None
        return job.future

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        try:
            self.index.current()
        except BaseException as exc:
            self._ready.set_exception(exc)
            return
        self._ready.set_result(None)
        try:
            while not self._stopping.is_set():
                jobs = self._collect()
                try:
                    self._answer(jobs)
                except Exception as exc:  # a bug must not leave requests waiting forever
                    log.exception("batch failed")
                    for job in jobs:
                        if not job.future.done():
                            job.future.set_exception(exc)
        finally:
            while True:  # nothing should wait after shutdown; fail what is left
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is not None and job.future.set_running_or_notify_cancel():
                    job.future.set_exception(ApiError(503, "server is shutting down"))
            self.index.close()

    def _collect(self) -> list[Job]:
        """The next job, then every job waiting, and those still coming within ``batch_wait``.

        A lone request never waits: the batch waits only while more requests are in
        flight than it holds.
        """
        first = self._queue.get()
        if first is None:
            return []
        jobs = [first]
        texts = len(first.texts)
        deadline = time.perf_counter() + self.limits.batch_wait
        while texts < self.limits.max_inputs:
            remaining = deadline - time.perf_counter()
            coming = self.requests_in_flight > len(jobs)
            try:
                if remaining > 0 and coming:
                    job = self._queue.get(timeout=remaining)
                else:
                    job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._stopping.set()
                break
            jobs.append(job)
            texts += len(job.texts)
        # A job whose client went away is dropped; the rest can no longer be cancelled.
        return [job for job in jobs if job.future.set_running_or_notify_cancel()]

    def _answer(self, jobs: list[Job]) -> None:
        if not jobs:
            return
        self.batches += 1
        encoding = [job for job in jobs if job.call is None]
        for job in jobs:
            if job.call is not None:
                self._settle(job, lambda job=job: job.call(self.index))
        if not encoding:
            return
        store = None  # the index as published now: one look per batch
        if any(job.k is not None for job in encoding):
            try:
                store = self.index.current()
            except Exception as exc:
                for job in encoding:
                    if job.k is not None:
                        job.future.set_exception(exc)
                encoding = [job for job in encoding if job.k is None]
        prepared = []
        for job in encoding:
            try:
                prepared.append((job, *self._tokenize(job, store)))
            except Exception as exc:
                job.future.set_exception(exc)
        if not prepared:
            return
        ids = [row for _, job_ids, _ in prepared for row in job_ids]
        spans = None
        if any(job_spans is not None for _, _, job_spans in prepared):
            spans = [
                span
                for _, job_ids, job_spans in prepared
                for span in (job_spans or [(0, 0)] * len(job_ids))
            ]
        # Queries only (short): passes of similar length rather than one padded pass.
        queries_only = all(job.side == "query" for job, _, _ in prepared)
        budget = self.encoder.latency_batch_tokens if queries_only else None
        try:
            vectors = np.zeros((len(ids), self.encoder.dim), dtype=np.float32)
            for positions, batch in self.encoder.iter_encode(
                ids, instruction_spans=spans, batch_tokens=budget
            ):
                vectors[positions] = batch
                self.forward_passes += 1
        except Exception as exc:
            for job, _, _ in prepared:
                job.future.set_exception(exc)
            return
        start = 0
        searches: dict[tuple[int, SearchKnobs], list[tuple[Job, np.ndarray]]] = {}
        for job, job_ids, _ in prepared:
            own = vectors[start : start + len(job_ids)]
            start += len(job_ids)
            if job.k is None:
                job.future.set_result(Embedded(own, sum(len(row) for row in job_ids)))
            else:
                searches.setdefault((job.k, job.knobs), []).append((job, own))
        for (k, knobs), group in searches.items():
            self._search(store, k, knobs, group)

    def _search(
        self, store: Any, k: int, knobs: SearchKnobs, group: list[tuple[Job, np.ndarray]]
    ) -> None:
        """One FAISS search and one SQLite read for every job asking the same k and knobs."""
        try:
            hits = hits_for(store, np.concatenate([own for _, own in group]), k, knobs)
        except Exception as exc:
            for job, _ in group:
                job.future.set_exception(exc)
            return
        start = 0
        for job, own in group:
            own_hits = hits[start : start + len(own)]
            start += len(own)
            job.future.set_result(Searched(own_hits, job.instruction, self.index.generation))

    def _tokenize(
        self, job: Job, store: Any
    ) -> tuple[list[list[int]], list[tuple[int, int]] | None]:
        if job.side == "document":
            titles = job.titles or [""] * len(job.texts)
            formatted = [
                self.encoder.format_document(title, text)
                for title, text in zip(titles, job.texts, strict=True)
            ]
            return self.encoder.tokenize(formatted), None
        if job.k is not None:  # a search falls back on the index's default instruction
            job.instruction = resolve_instruction(store, job.instruction, job.no_instruct)
        return self.encoder.tokenize_queries(list(job.texts), job.instruction)

    @staticmethod
    def _settle(job: Job, work: Callable[[], Any]) -> None:
        try:
            job.future.set_result(work())
        except Exception as exc:
            job.future.set_exception(exc)


# --------------------------------------------------------------- API models
class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str | None = Field(None, description="One query (or use `queries`).")
    queries: list[str] | None = Field(None, description="Several queries, answered in order.")
    instruct: str | None = Field(
        None, description="Task instruction (default: the one stored with the index)."
    )
    no_instruct: bool = Field(False, description="No instruction, not even the index's default.")
    k: int = Field(10, ge=1, description="Hits per query.")
    nprobe: int | None = Field(
        None, ge=1, description="IVF index: lists scanned per query (default: the index's)."
    )
    ef_search: int | None = Field(
        None, ge=1, description="HNSW index: candidates kept per query (default: the index's)."
    )


class SearchResponse(BaseModel):
    model: str
    generation: int | None = Field(description="The index generation that answered.")
    instruction: str | None
    results: list[list[dict[str, Any]]] = Field(
        description="One list per query; each hit has the fields of `engine search --json`."
    )


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request, plus ``input_type``, ``instruct`` and ``titles``."""

    model_config = ConfigDict(extra="forbid")

    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, description="Only the model's own dimension.")
    user: str | None = None
    input_type: Literal["query", "document"] = Field(
        "document",
        description="engine extension: `query` formats each input with the model's query "
        "template (and `instruct`); `document` as a document (with `titles`).",
    )
    instruct: str | None = Field(None, description="engine extension: a query's instruction.")
    titles: list[str] | None = Field(
        None, description="engine extension: one title per document input."
    )


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


# ---------------------------------------------------------------------- app
ENCODER_PATHS = ("/search", "/v1/embeddings")


class Guard:
    """ASGI middleware, before any work: the API key, the body size, requests in flight."""

    def __init__(self, app, *, api_key: str | None, max_body_bytes: int, batcher: Batcher) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key is not None else None
        self.max_body_bytes = max_body_bytes
        self.batcher = batcher

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        headers = dict(scope["headers"])
        if self.api_key is not None and path not in OPEN_PATHS:
            scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.api_key):
                message = "missing or wrong API key: send Authorization: Bearer <key>"
                response = JSONResponse(
                    error_body(401, message),
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            response = JSONResponse(
                error_body(413, f"request body over {self.max_body_bytes} bytes"), status_code=413
            )
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:  # a chunked body without a length
                raise ApiError(413, f"request body over {self.max_body_bytes} bytes")
            return message

        counted = path in ENCODER_PATHS
        if counted:
            self.batcher.requests_in_flight += 1
        try:
            await self.app(scope, limited_receive, send)
        finally:
            if counted:
                self.batcher.requests_in_flight -= 1


def error_body(status: int, message: str) -> dict[str, Any]:
    """OpenAI's error shape, so their clients show the message; one line of JSON."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": " ".join(message.split()), "type": kind, "code": status}}


def create_app(
    index_dir: str | Path,
    encoder: Encoder,
    *,
    api_key: str | None = None,
    limits: Limits | None = None,
    backend: MilvusIndex | None = None,
) -> FastAPI:
    """The FastAPI app serving ``index_dir`` (or a Milvus ``backend``) with ``encoder``."""
    limits = limits or Limits()
    index_dir = Path(index_dir)
    served = ServedMilvus(backend) if backend is not None else ServedIndex(index_dir, encoder)
    batcher = Batcher(served, encoder, limits)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await asyncio.to_thread(batcher.start)
        yield
        await asyncio.to_thread(batcher.stop)

    app = FastAPI(
        title="engine",
        version=__version__,
        summary="Search and embeddings with LLM text embeddings (E5-mistral recipe).",
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    app.state.limits = limits

    app.add_middleware(
        Guard, api_key=api_key, max_body_bytes=limits.max_body_bytes, batcher=batcher
    )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(exc.status_code, str(exc.detail)),
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        message = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
        return JSONResponse(error_body(422, message), status_code=422)

    @app.exception_handler(EngineError)
    async def engine_error(request: Request, exc: EngineError) -> JSONResponse:
        return JSONResponse(error_body(400, str(exc)), status_code=400)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return JSONResponse(
            error_body(500, f"internal error ({type(exc).__name__})"), status_code=500
        )

    async def run(job: Job) -> Any:
        return await asyncio.wrap_future(batcher.submit(job))

    async def search_queries(
        queries: list[str], instruct: str | None, no_instruct: bool, k: int, knobs: SearchKnobs
    ) -> SearchResponse:
        if not queries:
            raise ApiError(422, "give `query` or `queries`")
        if len(queries) > limits.max_inputs:
            raise ApiError(413, f"at most {limits.max_inputs} queries per request")
        if k > limits.max_k:
            raise ApiError(422, f"k must be at most {limits.max_k}")
        if knobs.nprobe is not None and knobs.nprobe > limits.max_nprobe:
            raise ApiError(422, f"nprobe must be at most {limits.max_nprobe}")
        if knobs.ef_search is not None and knobs.ef_search > limits.max_ef_search:
            raise ApiError(422, f"ef_search must be at most {limits.max_ef_search}")
        if any(len(q) > limits.max_query_chars for q in queries):
            raise ApiError(413, f"a query is over {limits.max_query_chars} characters")
        if instruct is not None and len(instruct) > limits.max_query_chars:
            raise ApiError(413, f"the instruction is over {limits.max_query_chars} characters")
        check_queries(queries, k)
        if instruct and no_instruct:
            raise ApiError(422, "instruct and no_instruct exclude each other")
        searched: Searched = await run(
            Job(texts=queries, instruction=instruct, no_instruct=no_instruct, k=k, knobs=knobs)
        )
        return SearchResponse(
            model=encoder.name,
            generation=searched.generation,
            instruction=searched.instruction,
            results=[[hit.to_dict() for hit in hits] for hits in searched.hits],
        )

    @app.post("/search", response_model=SearchResponse, tags=["search"])
    async def search_post(request: SearchRequest) -> SearchResponse:
        """Top-k hits per query: the hits `engine search --json` prints."""
        queries = ([request.query] if request.query is not None else []) + (request.queries or [])
        knobs = SearchKnobs(nprobe=request.nprobe, ef_search=request.ef_search)
        return await search_queries(
            queries, request.instruct, request.no_instruct, request.k, knobs
        )

    @app.get("/search", response_model=SearchResponse, tags=["search"])
    async def search_get(
        q: str = Query(description="The query."),
        instruct: str | None = Query(None, description="Task instruction."),
        no_instruct: bool = Query(False, description="No instruction at all."),
        k: int = Query(10, ge=1, description="Hits."),
        nprobe: int | None = Query(None, ge=1, description="IVF: lists scanned per query."),
        ef_search: int | None = Query(None, ge=1, description="HNSW: candidates per query."),
    ) -> SearchResponse:
        """The same search for browsers and curl: `/search?q=...&k=5&ef_search=256`."""
        knobs = SearchKnobs(nprobe=nprobe, ef_search=ef_search)
        return await search_queries([q], instruct, no_instruct, k, knobs)

    @app.post("/v1/embeddings", response_model=EmbeddingResponse, tags=["embeddings"])
    async def embeddings(request: EmbeddingRequest) -> EmbeddingResponse:
        """OpenAI-compatible embeddings from the served model (float or base64 float32)."""
        texts = [request.input] if isinstance(request.input, str) else request.input
        if not texts:
            raise ApiError(422, "input is empty")
        if len(texts) > limits.max_inputs:
            raise ApiError(413, f"at most {limits.max_inputs} inputs per request")
        if any(len(text) > limits.max_input_chars for text in texts):
            raise ApiError(413, f"an input is over {limits.max_input_chars} characters")
        if request.model and not _names_model(request.model, encoder.name):
            raise ApiError(
                404, f"model {request.model!r} is not served here; this is {encoder.name!r}"
            )
        if request.dimensions is not None and request.dimensions != encoder.dim:
            raise ApiError(422, f"dimensions: only {encoder.dim} is available")
        if request.input_type == "document" and request.instruct is not None:
            raise ApiError(422, "instruct applies to input_type query; documents get none")
        if request.titles is not None and (
            request.input_type != "document" or len(request.titles) != len(texts)
        ):
            raise ApiError(422, "titles: one per input, and only for input_type document")
        embedded: Embedded = await run(
            Job(
                side=request.input_type,
                texts=texts,
                instruction=request.instruct,
                titles=request.titles,
            )
        )
        data = [
            EmbeddingData(index=i, embedding=_encode_vector(vector, request.encoding_format))
            for i, vector in enumerate(embedded.vectors)
        ]
        usage = Usage(prompt_tokens=embedded.tokens, total_tokens=embedded.tokens)
        return EmbeddingResponse(data=data, model=encoder.name, usage=usage)

    @app.get("/health", tags=["server"])
    async def health() -> dict[str, Any]:
        """Liveness, and the index generation the server last answered from."""
        return {
            "status": "ok",
            "generation": batcher.index.generation,
            "model": encoder.name,
            "waiting": batcher.waiting,
            "batches": batcher.batches,
            "forward_passes": batcher.forward_passes,
        }

    @app.get("/info", tags=["server"])
    async def info() -> dict[str, Any]:
        """What `engine info --json` prints for the served index."""
        return await run(Job(call=lambda index: index.info()))

    @app.get("/instructions", tags=["search"])
    async def instructions() -> dict[str, Any]:
        """Task instruction presets: the paper's BEIR instructions, by dataset."""
        return {
            "presets": [{"name": name, "instruction": text} for name, text in INSTRUCTIONS.items()]
        }

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _names_model(asked: str, served: str) -> bool:
    asked, served = asked.strip().rstrip("/").lower(), served.rstrip("/").lower()
    return asked in (served, served.rsplit("/", 1)[-1]) or asked.rsplit("/", 1)[-1] == served


def _encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.astype(float).tolist()


def serve(
    index_dir: Path,
    *,
    host: str,
    port: int,
    model: str | None,
    device: str | None,
    api_key: str | None,
    limits: Limits,
    access_log: bool = False,
    backend: MilvusIndex | None = None,
) -> None:
    """Load the encoder and the index once, then serve until SIGTERM or Ctrl-C."""
    import uvicorn

    from indexer.search import load_encoder_for

    if backend is not None:
        encoder = load_encoder_for(backend, model, device)
        documents, what = backend.count(), str(backend)
    else:
        store = Store.open(index_dir)
        try:
            encoder = load_encoder_for(store, model, device)
            documents, what = store.count(), str(index_dir)
        finally:
            store.close()
    app = create_app(index_dir, encoder, api_key=api_key, limits=limits, backend=backend)
    shown = f"[{host}]" if ":" in host else host
    print(
        f"Serving {what} ({documents} documents, {encoder.name}) at http://{shown}:{port}/"
        + (" (API key required)" if api_key else "")
        + "; Ctrl-C stops.",
        flush=True,
    )
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the
    # handler found at start: a no-op one lets `engine serve` exit 0 after a clean stop.
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, lambda *_: None)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=access_log,
        timeout_graceful_shutdown=30,
    )
    print("Stopped.", flush=True)
