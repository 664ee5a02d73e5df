"""Data parallel training on two CPU processes (gloo): shared negatives, DDP through the Trainer."""

from __future__ import annotations

import json
from pathlib import Path

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


def _train_rank(rank: int, port: int, base: str, data: str, out: str, results) -> None:
    """One rank of a 2-process CPU run, as ``torchrun --nproc_per_node 2 -m train`` starts it."""
    import os

    from train.arguments import DataArguments, DataSource, ModelArguments, TrainingArguments
    from train.model import lora_parameters
    from train.trainer import Trainer

    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    # Count the micro-steps whose gradients DDP was told to keep local (the real no_sync runs).
    ddp = torch.nn.parallel.DistributedDataParallel
    real_no_sync = ddp.no_sync
    local_steps = []

    def counting_no_sync(self):
        local_steps.append(len(local_steps))
        return real_no_sync(self)

    ddp.no_sync = counting_no_sync
    trainer = Trainer(
        ModelArguments(base=base, temperature=0.1),
        DataArguments(
            sources=[DataSource(Path(data))],
            negatives_per_query=1,
            max_query_length=16,
            max_document_length=32,
        ),
        TrainingArguments(
            out=Path(out),
            epochs=2,
            batch_size=2,
            grad_accum=2,
            learning_rate=5e-3,
            progress=False,
        ),
        argv=["torchrun", "-m", "train"],
    )
    try:
        trainer.run()
        lora = {n: p.detach().clone() for n, p in lora_parameters(trainer.encoder.model).items()}
        results[rank] = (trainer.world, [e["loss"] for e in trainer.log], lora, len(local_steps))
    finally:
        dist.destroy_process_group()


def test_ddp_training_on_two_cpu_ranks(tmp_path, tiny_bert_path):
    from engine.distributed import free_port
    from engine.encoder import Encoder
    from tests.test_train_trainer import PROBES, make_data

    data = make_data(tmp_path / "train.jsonl", n=8)
    out = tmp_path / "model"
    results = mp.Manager().dict()
    mp.spawn(
        _train_rank,
        args=(free_port(), str(tiny_bert_path), str(data), str(out), results),
        nprocs=WORLD,
        join=True,
    )
    (world0, losses0, lora0, local0), (world1, losses1, lora1, local1) = results[0], results[1]
    assert world0 == world1 == WORLD
    # 8 examples / (2 per rank x 2 ranks) x 2 epochs = 4 micro-batches, 2 per optimizer step;
    # the logged loss is the mean over ranks.
    assert len(losses0) == 2 and losses0 == losses1
    # Gradients stayed local on each step's first micro-batch only: synchronising there would
    # waste a round trip, skipping it on the last would leave the replicas apart.
    assert local0 == local1 == 2
    # DDP kept the replicas identical, and the adapter moved.
    assert lora0.keys() == lora1.keys() and lora0
    for name in lora0:
        assert torch.equal(lora0[name], lora1[name]), name
    record = json.loads((out / "training_args.json").read_text())
    assert record["world_size"] == WORLD and record["steps"] == 2
    assert record["lora_tensors_changed"].split("/")[0] != "0"
    assert Encoder.load(str(out)).encode_texts(PROBES).shape == (len(PROBES), 32)
