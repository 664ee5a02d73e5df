"""The one thread of `engine serve` that embeds and searches.

One :class:`Batcher` thread owns the encoder and the index. Requests queue jobs
for it; it takes every job waiting (and those arriving within ``batch_wait``),
embeds their texts together in as few forward passes as the encoder's token
budget allows, then answers each job: vectors for ``/v1/embeddings``, hits from
:func:`indexer.search.hits_for` for ``/search``. Keeping SQLite, FAISS and the
tokenizer on one thread also keeps them out of each other's way.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from starlette.exceptions import HTTPException

from engine.app.served import ServedIndex, ServedMilvus
from engine.encoder import Encoder
from indexer.fusion import Fusion
from indexer.search import Hit, hits_for, resolve_instruction, resolve_mode
from indexer.vector_index import SearchKnobs

log = logging.getLogger("engine.server")


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
    """An HTTP error answered as one line of JSON; ``param`` names the field at fault."""

    def __init__(
        self,
        status_code: int,
        detail: str,
        headers: dict[str, str] | None = None,
        *,
        param: str | None = None,
    ) -> None:
        super().__init__(status_code, detail, headers)
        self.param = param


class Overloaded(ApiError):
    def __init__(self) -> None:
        super().__init__(503, "server busy: too many requests waiting", {"Retry-After": "1"})


@dataclass
class Job:
    """Texts to embed (queries or documents) and what to answer with them."""

    side: Literal["query", "document"] = "query"
    texts: Sequence[str] = ()
    instruction: str | None = None  # queries
    titles: Sequence[str] | None = None  # documents
    token_ids: Sequence[Sequence[int]] | None = None  # documents given as token ids, not texts
    k: int | None = None  # a search: answer hits, not vectors
    no_instruct: bool = False  # a search: not even the index's default instruction
    knobs: SearchKnobs = SearchKnobs()  # a search: nprobe (IVF), ef_search (HNSW)
    mode: str | None = None  # a search: dense, lexical or hybrid (None: the default)
    fusion: Fusion = Fusion()  # a hybrid search: how to fuse
    call: Callable[[ServedIndex], Any] | None = None  # work on the index, no encoding
    future: Future = field(default_factory=Future)

    @property
    def inputs(self) -> int:
        """How many sequences the job embeds."""
        return len(self.token_ids) if self.token_ids is not None else len(self.texts)


@dataclass
class Embedded:
    vectors: np.ndarray
    tokens: int


@dataclass
class Searched:
    hits: list[list[Hit]]
    instruction: str | None
    generation: int | None
    mode: str


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
        texts = first.inputs
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
            texts += job.inputs
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
        # Searches grouped by what they ask: one index search and one SQLite read a group.
        searches: dict[tuple[int, SearchKnobs, str, Fusion], list[tuple[Job, Any]]] = {}
        prepared = []
        for job in encoding:
            try:
                if job.k is not None:
                    job.mode = resolve_mode(store, job.mode)
                    if job.mode == "lexical":  # BM25 alone: nothing to embed
                        job.instruction = None
                        searches.setdefault(self._search_key(job), []).append((job, None))
                        continue
                prepared.append((job, *self._tokenize(job, store)))
            except Exception as exc:
                job.future.set_exception(exc)
        if prepared:
            self._encode(prepared, searches)
        for key, group in searches.items():
            self._search(store, key, group)

    def _encode(
        self,
        prepared: list[tuple[Job, list[list[int]], list[tuple[int, int]] | None]],
        searches: dict[tuple[int, SearchKnobs, str, Fusion], list[tuple[Job, Any]]],
    ) -> None:
        """Embed the prepared jobs' texts together; answer embeddings, queue searches."""
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
        for job, job_ids, _ in prepared:
            own = vectors[start : start + len(job_ids)]
            start += len(job_ids)
            if job.k is None:
                job.future.set_result(Embedded(own, sum(len(row) for row in job_ids)))
            else:
                searches.setdefault(self._search_key(job), []).append((job, own))

    @staticmethod
    def _search_key(job: Job) -> tuple[int, SearchKnobs, str, Fusion]:
        return (int(job.k or 0), job.knobs, str(job.mode), job.fusion)

    def _search(
        self,
        store: Any,
        key: tuple[int, SearchKnobs, str, Fusion],
        group: list[tuple[Job, np.ndarray | None]],
    ) -> None:
        """One index search and one SQLite read for every job asking the same k, knobs, mode
        and fusion (lexical jobs carry no vectors)."""
        k, knobs, mode, fusion = key
        queries = [text for job, _ in group for text in job.texts]
        vectors = None if mode == "lexical" else np.concatenate([own for _, own in group])
        try:
            hits = hits_for(store, vectors, k, knobs, queries=queries, mode=mode, fusion=fusion)
        except Exception as exc:
            for job, _ in group:
                job.future.set_exception(exc)
            return
        start = 0
        for job, _ in group:
            own_hits = hits[start : start + len(job.texts)]
            start += len(job.texts)
            job.future.set_result(Searched(own_hits, job.instruction, self.index.generation, mode))

    def _tokenize(
        self, job: Job, store: Any
    ) -> tuple[list[list[int]], list[tuple[int, int]] | None]:
        if job.token_ids is not None:
            return self.encoder.tokenize_document_ids(job.token_ids), None
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
