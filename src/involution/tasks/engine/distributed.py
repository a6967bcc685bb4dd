"""torchrun support: process-group setup, samplers that resume mid-epoch and shard without padding, reductions.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) training runs DistributedDataParallel over gloo on the
CPU or nccl on GPUs; without it everything here degrades to one process and no communication.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler, Sampler


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (no-op for a single process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world_size, local_rank)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    """Sum a few numbers over all processes (returned unchanged for a single process)."""
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_gather_objects(obj: object, info: DistInfo) -> list[object]:
    if not info.enabled:
        return [obj]
    out: list[object] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


class ResumableSampler(DistributedSampler):
    """DistributedSampler that yields ``(epoch, index)`` keys and can start part-way through an epoch.

    The permutation of an epoch depends only on ``(seed, epoch)`` (as in DistributedSampler); ``set_start(k)``
    skips this process's first ``k`` samples of the epoch, which is how a resumed run continues mid-epoch.
    The epoch travels with each index so the data set can seed that sample's augmentation.
    """

    def __init__(self, dataset: Dataset, info: DistInfo, seed: int, shuffle: bool = True) -> None:
        super().__init__(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.start = 0

    def set_start(self, start: int) -> None:
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:  # (epoch, index) keys: ResumableSampler's own
        for i, index in enumerate(super().__iter__()):
            if i >= self.start:
                yield (self.epoch, index)

    def __len__(self) -> int:
        return self.num_samples - self.start


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank``: each sample is evaluated exactly once, none is padded in."""

    def __init__(self, length: int, info: DistInfo) -> None:
        self.indices = range(info.rank, length, info.world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
