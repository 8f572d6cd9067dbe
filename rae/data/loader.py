"""Deterministic, resumable data order: a permutation per (seed, epoch), sharded across ranks.

A resumed run calls ``sampler.seek(samples_this_rank_has_consumed)`` (or ``set_position``)
and sees exactly the samples it would have seen had it never stopped.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def mix_seed(*values: int) -> int:
    """One well-mixed 63-bit seed from several integers (e.g. seed and epoch)."""
    return int(np.random.SeedSequence(list(values)).generate_state(1, np.uint64)[0] >> np.uint64(1))


class ResumableSampler(Sampler[int]):
    """Indices of epoch ``epoch``: a permutation seeded by (seed, epoch), this rank's shard of it.

    Rank r takes positions r, r + world_size, ... of the epoch's order, so shards never
    overlap. With ``drop_last`` the order is first cut to a multiple of ``world_size`` (equal
    shards, as training across ranks needs); without it every sample is used once and the
    first ``dataset_len % world_size`` ranks get one more. Iterating to the end moves on to
    the next epoch; ``set_position`` / ``seek`` jump to any point.
    """

    def __init__(self, dataset_len: int, seed: int = 0, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1, drop_last: bool = False) -> None:
        if dataset_len <= 0:
            raise ValueError(f"ResumableSampler: dataset_len must be positive, got {dataset_len}")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"ResumableSampler: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if drop_last and dataset_len < world_size:
            raise ValueError(f"ResumableSampler: {dataset_len} samples cannot fill {world_size} ranks with drop_last")
        self.dataset_len, self.seed, self.shuffle = dataset_len, seed, shuffle
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        used = dataset_len - dataset_len % world_size if drop_last else dataset_len
        self.num_samples = len(range(rank, used, world_size))
        self._used = used
        self.epoch = 0
        self.index = 0

    def order(self, epoch: int) -> torch.Tensor:
        """This rank's whole shard of epoch ``epoch``, in order."""
        if self.shuffle:
            perm = torch.randperm(self.dataset_len, generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch)))
        else:
            perm = torch.arange(self.dataset_len)
        return perm[: self._used][self.rank :: self.world_size]

    def set_position(self, epoch: int, index: int) -> None:
        """Continue at sample ``index`` (0-based, within this rank's shard) of epoch ``epoch``."""
        if epoch < 0 or not 0 <= index <= self.num_samples:
            raise ValueError(f"ResumableSampler: position (epoch={epoch}, index={index}) is outside "
                             f"epochs >= 0 and 0 <= index <= {self.num_samples}")
        self.epoch, self.index = epoch, index

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its beginning (the `DistributedSampler` spelling)."""
        self.set_position(epoch, 0)

    def seek(self, consumed: int) -> None:
        """Continue after ``consumed`` samples of this rank, counted from epoch 0."""
        self.set_position(*divmod(consumed, self.num_samples))

    def __len__(self) -> int:
        return self.num_samples - self.index

    def __iter__(self) -> Iterator[int]:
        epoch, start = self.epoch, self.index
        yield from self.order(epoch)[start:].tolist()
        self.set_position(epoch + 1, 0)


def make_loader(dataset: Dataset, batch_size: int, sampler: ResumableSampler, num_workers: int = 0,
                pin_memory: bool = False, drop_last: bool = False) -> DataLoader:
    """A DataLoader over ``sampler``'s order; workers persist across epochs and prefetch.

    Worker random streams (augmentations) are seeded from (sampler seed, rank), not from
    the global generator, so the same command gives the same augmentations.
    """
    if batch_size <= 0:
        raise ValueError(f"make_loader: batch_size must be positive, got {batch_size}")
    workers = dict(persistent_workers=True, prefetch_factor=4) if num_workers > 0 else {}
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=pin_memory, drop_last=drop_last,
                      generator=torch.Generator().manual_seed(mix_seed(sampler.seed, sampler.rank)), **workers)
