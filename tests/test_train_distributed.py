"""Negatives shared across ranks: two CPU processes (gloo) match one process with the whole batch."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from train.model import gather_with_grad, info_nce

WORLD = 2
QUERIES_PER_RANK = 3
DOCS_PER_QUERY = 2  # positive + one hard negative
DIM = 8
TEMPERATURE = 0.05


def full_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, documents (query i's positive at i * DOCS_PER_QUERY) and targets of both ranks."""
    generator = torch.Generator().manual_seed(0)
    n = WORLD * QUERIES_PER_RANK
    queries = torch.nn.functional.normalize(torch.randn(n, DIM, generator=generator), dim=-1)
    documents = torch.nn.functional.normalize(
        torch.randn(n * DOCS_PER_QUERY, DIM, generator=generator), dim=-1
    )
    targets = torch.arange(n) * DOCS_PER_QUERY
    return queries, documents, targets


def _rank_gradients(rank: int, init_file: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        queries, documents, _ = full_batch()
        q = queries[rank * QUERIES_PER_RANK : (rank + 1) * QUERIES_PER_RANK].clone()
        d_rows = QUERIES_PER_RANK * DOCS_PER_QUERY
        d = documents[rank * d_rows : (rank + 1) * d_rows].clone()
        q.requires_grad_(True)
        d.requires_grad_(True)
        all_documents, offset = gather_with_grad(d)
        targets = torch.arange(QUERIES_PER_RANK) * DOCS_PER_QUERY + offset
        loss = info_nce(q, all_documents, targets, TEMPERATURE)
        loss.backward()
        # DDP and DeepSpeed average parameter gradients over ranks, so the update is that of
        # the mean of the ranks' losses: its gradient for this rank's rows is ours / WORLD.
        grads = [q.grad / WORLD, d.grad / WORLD]
        loss_sum = loss.detach().clone()
        dist.all_reduce(loss_sum)
        results[rank] = (grads[0], grads[1], (loss_sum / WORLD).item(), offset)
    finally:
        dist.destroy_process_group()


def test_two_ranks_equal_one_big_batch(tmp_path):
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_rank_gradients, args=(str(tmp_path / "init"), results), nprocs=WORLD, join=True)
    queries, documents, targets = full_batch()
    queries.requires_grad_(True)
    documents.requires_grad_(True)
    loss = info_nce(queries, documents, targets, TEMPERATURE)
    loss.backward()
    d_rows = QUERIES_PER_RANK * DOCS_PER_QUERY
    for rank in range(WORLD):
        q_grad, d_grad, mean_loss, offset = results[rank]
        assert offset == rank * d_rows
        assert abs(mean_loss - loss.item()) < 1e-5
        q_rows = slice(rank * QUERIES_PER_RANK, (rank + 1) * QUERIES_PER_RANK)
        own_docs = slice(rank * d_rows, (rank + 1) * d_rows)
        # Each rank's documents also get the gradient from the other rank's queries.
        torch.testing.assert_close(q_grad, queries.grad[q_rows], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(d_grad, documents.grad[own_docs], atol=1e-6, rtol=1e-5)
