"""Multi-process training helpers (``torchrun``; gloo on CPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed() -> DistInfo:
    """Initialise the process group when launched by ``torchrun`` (``WORLD_SIZE > 1``)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    # two processes on two cores: one intra-op thread each avoids oversubscription
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size())


def cleanup_distributed(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_ranks_agree(flag: bool, info: DistInfo) -> bool:
    """Rank 0's decision, broadcast to every rank (e.g. a wall-clock stop)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    dist.broadcast(t, src=0)
    return bool(t.item())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
