"""Encoding on many devices and machines, committed by one writer.

Started by ``torchrun --nnodes M --nproc_per_node N -m engine index ...`` (or
``... -m engine bench beir ...``), every rank loads the encoder on its own
device. Rank 0 is the only writer: it reads the corpus as a stream, diffs it
against the index and, one checkpoint round at a time, tokenizes the round's
pending documents, deals each rank a share balanced by tokens, encodes its own
share, gathers the others' vectors and commits the round in one transaction
(while it holds at most two rounds, never the whole pending corpus). Incremental indexing,
content hashes, checkpoints and crash safety are therefore those of a
single-process run: a killed rank (the launcher then stops the rest) or a killed
writer loses at most the two rounds in flight (one being committed, whole or not
at all, and one being encoded), and the next run finishes the job.

The other ranks run :meth:`IndexingGroup.encode_for_writer`: they wait for jobs from the
writer (one per ``update_index`` call that has something to encode), encode the
shares of each round until the writer ends the job, until it says it is done.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import torch.distributed as dist

from engine.distributed import join_launched_group, rank_device
from engine.encoder import Encoder
from engine.errors import EngineError

T = TypeVar("T")
P = TypeVar("P")

WRITER = 0


def balance_by_tokens(
    positions: Sequence[int], lengths: Sequence[int], ranks: int, writer_share: float = 1.0
) -> list[list[int]]:
    """Deal ``positions`` to ``ranks`` shares with about equal token sums.

    Longest first, each to the rank with the least tokens per unit of capacity
    so far; the writer (rank 0) has ``writer_share`` of a rank's capacity (0: none).
    """
    capacity = [writer_share] + [1.0] * (ranks - 1)
    shares: list[list[int]] = [[] for _ in range(ranks)]
    loads = [0] * ranks
    lightest = [(0.0, rank) for rank in range(ranks) if capacity[rank] > 0]
    for position in sorted(positions, key=lambda p: -lengths[p]):
        _, rank = heapq.heappop(lightest)
        shares[rank].append(position)
        loads[rank] += max(lengths[position], 1)
        heapq.heappush(lightest, (loads[rank] / capacity[rank], rank))
    return shares


def encode_share(encoder: Encoder, ids: Sequence[Sequence[int]]) -> np.ndarray:
    """Vectors of token id lists, in their order (token-budget batches inside)."""
    vectors = np.zeros((len(ids), encoder.dim), dtype=np.float32)
    for positions, batch in encoder.iter_encode(ids, progress=False):
        vectors[positions] = batch
    return vectors


def _broadcast(message: Any) -> Any:
    box = [message]
    dist.broadcast_object_list(box, src=WRITER)
    return box[0]


class IndexingGroup:
    """The ranks of one launched job, as seen by a command (a no-op in a plain process).

    ::

        with IndexingGroup() as group:
            model = group.writer_decides(pick_model)   # the writer's choice, on every rank
            encoder = Encoder.load(model, device=group.device(device))
            if not group.is_writer:
                group.encode_for_writer(encoder)
                return
            ...  # the writer's own work; update_index(..., group=group) spreads encoding
    """

    def __init__(self) -> None:
        self.rank, self.world = WRITER, 1
        # True while the other ranks wait in serve() for the writer's next message.
        self.workers_waiting = False

    def __enter__(self) -> IndexingGroup:
        self.rank, self.world = join_launched_group()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.world > 1 and self.is_writer and self.workers_waiting:
            _broadcast({"job": "done"})
            self.workers_waiting = False
        # Failing inside a round, the writer just exits and the launcher stops the others.
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()

    @property
    def is_writer(self) -> bool:
        return self.rank == WRITER

    def device(self, device: str | None) -> str | None:
        return rank_device(device)

    def writer_decides(self, decide: Callable[[], T], *, share: bool = True) -> T | None:
        """Run ``decide`` on the writer and hand its result to every rank (``share=False``:
        the other ranks get None, e.g. for a corpus only the writer reads).

        An error on the writer is raised there (and printed as usual); the other
        ranks then leave quietly with exit status 1.
        """
        if self.world == 1:
            return decide()
        if not self.is_writer:
            message = _broadcast(None)
            if "failed" in message:
                raise SystemExit(1)
            return message["value"]
        try:
            value = decide()
        except BaseException:
            _broadcast({"failed": True})
            raise
        _broadcast({"value": value if share else None})
        self.workers_waiting = True
        return value

    def encode_for_writer(self, encoder: Encoder) -> None:
        """On ranks > 0: encode the shares the writer deals until it is done."""
        while True:
            job = _broadcast(None)
            if job["job"] == "done":
                return
            mine = encoder.describe()
            problem = None
            if (job["fingerprint"], job["max_length"]) != (mine["fingerprint"], mine["max_length"]):
                problem = (
                    f"rank {self.rank} loaded {mine['model']} ({mine['fingerprint'][:12]}, "
                    f"max {mine['max_length']} tokens), the writer {job['model']} "
                    f"({job['fingerprint'][:12]}, max {job['max_length']} tokens)"
                )
            dist.gather_object(problem, None, dst=WRITER)
            if _broadcast(None):
                raise SystemExit(1)  # the writer reports it
            while True:  # rounds until the writer deals None: the end of the job
                share: list[Any] = [None]
                dist.scatter_object_list(share, None, src=WRITER)
                if share[0] is None:
                    break
                dist.gather_object(encode_share(encoder, share[0]), None, dst=WRITER)


def encode_across_ranks(
    group: IndexingGroup,
    encoder: Encoder,
    rounds: Iterable[tuple[P, Sequence[Sequence[int]]]],
) -> Iterator[tuple[P, Sequence[Sequence[int]], list[int], np.ndarray]]:
    """On the writer of ``group``: yield ``(payload, ids, positions, vectors)`` one round at a time.

    ``rounds`` gives each round's token id lists with a payload of the caller's (its
    documents), read lazily: the next round is drawn while the ranks encode this one.
    Each round is dealt to the ranks balanced by tokens, longest first (like the
    single-process batching); the writer encodes its own share and gathers the others'
    vectors. The caller commits a round while the ranks already encode the next one,
    and the writer's own share shrinks by the time its commits and reads take.
    """
    if not group.workers_waiting:
        raise EngineError("distributed indexing needs the ranks started through IndexingGroup")
    world = group.world
    rounds = iter(rounds)
    upcoming = next(rounds, None)
    if upcoming is None:
        return  # nothing to encode: no job
    group.workers_waiting = False
    _broadcast({"job": "encode", **encoder.describe()})
    problems: list[Any] = [None] * world
    dist.gather_object(None, problems, dst=WRITER)
    problems = [p for p in problems if p is not None]
    _broadcast(problems)
    if problems:
        raise EngineError(f"the ranks loaded different encoders: {problems[0]}")
    writer_share, writer_rate = 1.0, None
    previous = None
    while upcoming is not None:
        payload, ids = upcoming
        lengths = [len(x) for x in ids]
        shares = balance_by_tokens(range(len(ids)), lengths, world, writer_share)
        own: list[Any] = [None]
        dist.scatter_object_list(own, [[ids[p] for p in s] for s in shares], src=WRITER)
        paused = time.perf_counter()
        if previous is not None:
            # The caller commits the last round while the other ranks encode this one...
            yield previous
            previous = None  # held: this round and the next, never more
        upcoming = next(rounds, None)  # ... and reads and tokenizes the next one
        busy_seconds = time.perf_counter() - paused
        encoding = time.perf_counter()
        own_vectors = encode_share(encoder, own[0])
        own_tokens = sum(lengths[p] for p in shares[WRITER])
        if own_tokens:
            writer_rate = own_tokens / max(time.perf_counter() - encoding, 1e-9)
        gathered: list[Any] = [None] * world
        dist.gather_object(own_vectors, gathered, dst=WRITER)
        previous = (payload, ids, [p for share in shares for p in share], np.vstack(gathered))
        # The writer commits, reads and encodes while a rank only encodes: shrink its share
        # by that time, so every rank reaches the gather together (0: a pure writer).
        if writer_rate is not None:
            rank_tokens = max(sum(lengths[p] for p in shares[-1]), 1)
            writer_share = max(0.0, 1.0 - busy_seconds * writer_rate / rank_tokens)
    dist.scatter_object_list([None], [None] * world, src=WRITER)  # the end of the job
    group.workers_waiting = True
    yield previous
