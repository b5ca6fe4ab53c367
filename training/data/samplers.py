"""The map-style training sampler: the same global batches whatever the number of processes, resumable mid-epoch."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ShardedShuffleSampler(Sampler[int]):
    """Per-epoch permutation (seed + epoch) cut into global batches of `batch_size * num_processes`; each process takes
    its consecutive slice of every global batch. The global batch is the same whatever the number of processes, and
    `start_batch` resumes mid-epoch exactly."""

    def __init__(self, length: int, batch_size: int, num_processes: int, process_index: int, seed: int):
        self.length, self.batch_size = length, batch_size
        self.num_processes, self.process_index, self.seed = num_processes, process_index, seed
        self.epoch, self.start_batch = 0, 0
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"data set of {length} samples is smaller than one global batch "
                f"({batch_size} x {num_processes} processes): lower `batch_size`"
            )

    @property
    def batches_per_epoch(self) -> int:
        return self.length // (self.batch_size * self.num_processes)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        global_batch = self.batch_size * self.num_processes
        for batch in range(self.start_batch, self.batches_per_epoch):
            start = batch * global_batch + self.process_index * self.batch_size
            yield from order[start : start + self.batch_size]

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


__all__ = ["ShardedShuffleSampler"]
