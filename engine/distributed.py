"""torch.distributed basics shared by distributed training and distributed indexing.

A launcher (``torchrun``, or ``torch.multiprocessing`` in the tests) starts one
process per device and sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT``; these helpers join that process group
(NCCL on GPUs, gloo on CPUs) and say where each process runs.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist

# Ranks wait in collectives while the writer reads and tokenizes a whole corpus or commits a
# checkpoint; torch's default (10 minutes for NCCL) is too short for a big corpus.
COLLECTIVE_TIMEOUT = timedelta(hours=2)


def rank_and_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def launched_world() -> int:
    """The world size a launcher asked for (1 when started as a plain process)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def join_launched_group() -> tuple[int, int]:
    """Join the process group a launcher set up, if any; returns (rank, world size)."""
    if launched_world() > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank())
            dist.init_process_group(
                backend="nccl",
                device_id=torch.device("cuda", local_rank()),
                timeout=COLLECTIVE_TIMEOUT,
            )
        else:
            dist.init_process_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT)
    return rank_and_world()


def rank_device(device: str | None) -> str | None:
    """This process's device: ``cuda:LOCAL_RANK`` under a launcher on GPUs, else ``device``.

    ``None`` and plain ``cuda`` map to the process's own GPU; an explicit
    ``cuda:N`` or ``cpu`` is kept.
    """
    if launched_world() > 1 and device in (None, "cuda") and torch.cuda.is_available():
        return f"cuda:{local_rank()}"
    return device


def free_port() -> int:
    """A free TCP port on the loopback interface (for a local ``MASTER_PORT``)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
