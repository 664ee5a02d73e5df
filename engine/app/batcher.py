"""The one thread of `engine serve` that embeds and searches.

One :class:`Batcher` thread owns the encoder and the index. Requests queue jobs
for it; it takes every job waiting (and those arriving within ``batch_wait``),
embeds their texts together in as few forward passes as the encoder's token
budget allows, then answers each job: vectors for ``/v1/embeddings``, hits from
:meth:`engine.api.Index.search` (given the embeddings) for ``/search``. Keeping SQLite, FAISS and the
tokenizer on one thread also keeps them out of each other's way.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from starlette.exceptions import HTTPException

from engine.api import Index
from engine.app.served import ServedIndex, ServedMilvus
from engine.encoder import Encoder, token_budget_batches
from indexer.filters import Condition
from indexer.fusion import Fusion
from indexer.search import Hit
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
    request_timeout: float = 60.0  # seconds a request may take; then 504
    # Tokens of one work unit (one forward pass) between two looks at the queue: how long a
    # small request can wait behind a large one.
    unit_tokens: int = 1024


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
    where: Condition | None = None  # a search: a metadata filter (applied inside it)
    call: Callable[[ServedIndex], Any] | None = None  # work on the index, no encoding
    future: Future = field(default_factory=Future)
    deadline: float | None = None  # time.monotonic() by which it is answered (set on submit)
    abandoned: bool = False  # the client went away: its remaining work is dropped

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


@dataclass
class Group:
    """Jobs embedded together, advanced one work unit (one forward pass) at a time."""

    prepared: list[tuple[Job, list[list[int]], list[tuple[int, int]] | None]]
    ids: list[list[int]]
    spans: list[tuple[int, int]] | None
    passes: list[list[int]]  # positions in ``ids``, one forward pass each
    vectors: np.ndarray
    done: int = 0  # passes encoded so far

    @property
    def jobs(self) -> list[Job]:
        return [job for job, _, _ in self.prepared]


class Batcher:
    """The one thread that embeds and searches; requests wait on futures.

    Jobs that arrive together are embedded together (a group); a group is advanced one
    work unit at a time (one forward pass of at most ``Limits.unit_tokens`` tokens), and
    between two units the queue is looked at again: a new group goes first, so a small
    request waits at most one unit behind a large one, and large groups take turns. A job
    past its deadline, or whose client went away, is answered or dropped between units.
    """

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
        self._groups: deque[Group] = deque()
        self._stopping = threading.Event()
        # Set by begin_shutdown (SIGTERM): every job must be answered by then.
        self._shutdown_at: float | None = None
        self._ready: Future = Future()
        self._thread = threading.Thread(target=self._run, name="engine-batcher", daemon=True)

    def start(self) -> None:
        """Start the thread and wait until it has opened the index (its errors raise here)."""
        self._thread.start()
        self._ready.result()

    def begin_shutdown(self, grace: float) -> None:
        """SIGTERM: new jobs get 503, and jobs still unanswered ``grace`` seconds from now
        are answered 503 then (the HTTP side still has time to send it)."""
        self._shutdown_at = time.monotonic() + grace

    def stop(self) -> None:
        self._stopping.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass  # the thread sees the flag after its unit
        self._thread.join(timeout=60)

    def submit(self, job: Job) -> Future:
        if self._stopping.is_set() or self._shutdown_at is not None:
            raise ApiError(503, "server is shutting down")
        job.deadline = time.monotonic() + self.limits.request_timeout
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise Overloaded() from None
        return job.future

    def deadline_of(self, job: Job) -> float:
        """When ``job`` must be answered: its own deadline, or the shutdown's if earlier."""
        deadline = job.deadline if job.deadline is not None else float("inf")
        return min(deadline, self._shutdown_at) if self._shutdown_at is not None else deadline

    def expired(self, job: Job) -> ApiError:
        """The answer to a job that ran out of time."""
        if self._shutdown_at is not None and time.monotonic() >= self._shutdown_at:
            return ApiError(503, "server is shutting down")
        return ApiError(
            504, f"request took longer than the server's {self.limits.request_timeout:g} s limit"
        )

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
                jobs = self._collect(block=not self._groups)
                try:
                    self._start(jobs)
                    self._drop_finished_jobs()
                    if self._groups:
                        self._advance(self._groups.popleft())
                except Exception as exc:  # a bug must not leave requests waiting forever
                    log.exception("batch failed")
                    for job in jobs + [j for group in self._groups for j in group.jobs]:
                        if not job.future.done():
                            job.future.set_exception(exc)
                    self._groups.clear()
        finally:
            # Nothing should wait after shutdown; fail what is left.
            left = [job for group in self._groups for job in group.jobs]
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is not None and job.future.set_running_or_notify_cancel():
                    left.append(job)
            for job in left:
                if not job.future.done():
                    job.future.set_exception(ApiError(503, "server is shutting down"))
            self.index.close()

    def _collect(self, *, block: bool) -> list[Job]:
        """Jobs that arrived: the next one (waiting for it only when idle), every job waiting,
        and those still coming within ``batch_wait``.

        A lone request never waits: the batch waits only while more requests are in
        flight than it holds.
        """
        try:
            first = self._queue.get() if block else self._queue.get_nowait()
        except queue.Empty:
            return []
        if first is None:
            self._stopping.set()
            return []
        jobs = [first]
        texts = first.inputs
        deadline = time.perf_counter() + self.limits.batch_wait
        started = sum(not job.future.done() for group in self._groups for job in group.jobs)
        while texts < self.limits.max_inputs:
            remaining = deadline - time.perf_counter()
            coming = self.requests_in_flight > len(jobs) + started
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

    def _start(self, jobs: list[Job]) -> None:
        """Answer index calls; tokenize the rest into groups that go first in line. A job over
        one unit of tokens gets a group of its own, so the small ones are not held up by it."""
        if not jobs:
            return
        self.batches += 1
        now = time.monotonic()
        encoding = []
        for job in jobs:
            if now >= self.deadline_of(job):
                job.future.set_exception(self.expired(job))
            elif job.call is not None:
                self._settle(job, lambda job=job: job.call(self.index))
            else:
                encoding.append(job)
        if not encoding:
            return
        index = None  # the index as published now: one look per batch
        if any(job.k is not None for job in encoding):
            try:
                index = self.index.current()
            except Exception as exc:
                for job in encoding:
                    if job.k is not None:
                        job.future.set_exception(exc)
                encoding = [job for job in encoding if job.k is None]
        lexical: dict[
            tuple[int, SearchKnobs, str, Fusion, Condition | None], list[tuple[Job, Any]]
        ] = {}
        small, large = [], []
        for job in encoding:
            try:
                if job.k is not None:
                    job.mode = index.mode_for(job.mode)
                    if job.mode == "lexical":  # BM25 alone: nothing to embed
                        job.instruction = None
                        lexical.setdefault(self._search_key(job), []).append((job, None))
                        continue
                job_ids, job_spans = self._tokenize(job, index)
            except Exception as exc:
                job.future.set_exception(exc)
                continue
            prepared = (job, job_ids, job_spans)
            tokens = sum(len(row) for row in job_ids)
            (large if tokens > self.limits.unit_tokens else small).append([prepared])
        for key, found in lexical.items():
            self._search(index, key, found)
        groups = [self._group(prepared) for prepared in [sum(small, []), *large] if prepared]
        self._groups.extendleft(reversed(groups))

    def _group(self, prepared) -> Group:
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
        budget = self.encoder.latency_batch_tokens if queries_only else self.encoder.batch_tokens
        passes = token_budget_batches(
            [len(row) for row in ids], min(budget, self.limits.unit_tokens)
        )
        vectors = np.zeros((len(ids), self.encoder.dim), dtype=np.float32)
        return Group(prepared, ids, spans, passes, vectors)

    def _drop_finished_jobs(self) -> None:
        """Between units: answer jobs past their deadline (504, or 503 at shutdown), forget jobs
        whose client went away, and drop groups nobody waits for any more."""
        now = time.monotonic()
        for group in list(self._groups):
            for job in group.jobs:
                if job.future.done():
                    continue
                if job.abandoned:
                    job.future.set_exception(ApiError(503, "the client went away"))
                elif now >= self.deadline_of(job):
                    job.future.set_exception(self.expired(job))
            if all(job.future.done() for job in group.jobs):
                self._groups.remove(group)

    def _advance(self, group: Group) -> None:
        """One unit of ``group``: one forward pass; then, if it was the last, the answers."""
        positions = group.passes[group.done]
        spans = [group.spans[i] for i in positions] if group.spans is not None else None
        try:
            group.vectors[positions] = self.encoder.encode_ids(
                [group.ids[i] for i in positions], instruction_spans=spans
            )
        except Exception as exc:
            for job in group.jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        self.forward_passes += 1
        group.done += 1
        if group.done < len(group.passes):
            self._groups.append(group)  # back of the line: large groups take turns
            return
        self._answer(group)

    def _answer(self, group: Group) -> None:
        start = 0
        searches: dict[
            tuple[int, SearchKnobs, str, Fusion, Condition | None], list[tuple[Job, Any]]
        ] = {}
        for job, job_ids, _ in group.prepared:
            own = group.vectors[start : start + len(job_ids)]
            start += len(job_ids)
            if job.future.done():
                continue
            if job.k is None:
                job.future.set_result(Embedded(own, sum(len(row) for row in job_ids)))
            else:
                searches.setdefault(self._search_key(job), []).append((job, own))
        if not searches:
            return
        try:
            index = self.index.current()  # as published now (a long group may outlive one)
        except Exception as exc:
            for group_jobs in searches.values():
                for job, _ in group_jobs:
                    job.future.set_exception(exc)
            return
        for key, found in searches.items():
            self._search(index, key, found)

    @staticmethod
    def _search_key(job: Job) -> tuple[int, SearchKnobs, str, Fusion, Condition | None]:
        return (int(job.k or 0), job.knobs, str(job.mode), job.fusion, job.where)

    def _search(
        self,
        index: Index,
        key: tuple[int, SearchKnobs, str, Fusion, Condition | None],
        group: list[tuple[Job, np.ndarray | None]],
    ) -> None:
        """One index search and one SQLite read for every job asking the same k, knobs, mode,
        fusion and filter (lexical jobs carry no vectors)."""
        k, knobs, mode, fusion, where = key
        queries = [text for job, _ in group for text in job.texts]
        vectors = None if mode == "lexical" else np.concatenate([own for _, own in group])
        try:
            hits = index.search(
                queries,
                k,
                mode=mode,
                fusion=fusion,
                where=where,
                nprobe=knobs.nprobe,
                ef_search=knobs.ef_search,
                embeddings=vectors,
            )
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
        self, job: Job, index: Index | None
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
            job.instruction = index.instruction_for(job.instruction, job.no_instruct, job.mode)
        return self.encoder.tokenize_queries(list(job.texts), job.instruction)

    @staticmethod
    def _settle(job: Job, work: Callable[[], Any]) -> None:
        try:
            job.future.set_result(work())
        except Exception as exc:
            job.future.set_exception(exc)
