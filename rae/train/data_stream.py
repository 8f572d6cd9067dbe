"""An endless, resumable stream of training batches over a dataset.

Epochs roll over by themselves; the position (epoch, samples of the epoch's global order
consumed by all ranks together) is part of the checkpoint, so a resumed run continues with
exactly the samples, in the order, it would have seen next, on any number of ranks that divides
that position (rank r reads positions r, r + W, ... of the global order). With
``num_workers = 0`` random augmentations draw from the global generator, which the checkpoint
restores, so resume is exact throughout; with workers, augmentations drawn inside worker
processes are re-drawn after a resume (samples and order stay exact).
"""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from rae.accelerator import Accelerator
from rae.data.loader import ResumableSampler, make_loader


class DataStream:
    """``next(stream)`` gives this rank's next batch; ``state_dict`` records where it is."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        accelerator: Accelerator,
        seed: int,
        shuffle: bool = True,
        num_workers: int = 0,
    ) -> None:
        if len(dataset) < batch_size * accelerator.world_size:
            raise ValueError(
                f"the dataset has {len(dataset)} samples, fewer than one global batch "
                f"({batch_size} per rank x {accelerator.world_size} ranks)"
            )
        self.sampler = ResumableSampler(len(dataset), seed=seed, shuffle=shuffle, rank=accelerator.rank,
                                        world_size=accelerator.world_size, drop_last=True)
        self.loader = make_loader(dataset, batch_size, self.sampler, num_workers,
                                  pin_memory=accelerator.device.type == "cuda", drop_last=True)
        self.epoch, self.index = 0, 0
        self._iter = None

    def __iter__(self) -> "DataStream":
        return self

    def __next__(self) -> Any:
        while True:
            if self._iter is None:
                self.sampler.set_position(self.epoch, self.index)
                self._iter = iter(self.loader)
            try:
                batch = next(self._iter)
            except StopIteration:
                self.epoch, self.index, self._iter = self.epoch + 1, 0, None
                continue
            self.index += len(batch[0])
            return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.index * self.sampler.world_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, consumed, ranks = int(state["epoch"]), int(state["consumed"]), self.sampler.world_size
        if consumed % ranks:
            raise ValueError(f"the checkpoint's data position (epoch {epoch}, {consumed} samples into it) cannot be "
                             f"split over {ranks} ranks; resume on a number of ranks that divides {consumed}")
        self.epoch, self.index, self._iter = epoch, consumed // ranks, None

    @property
    def batches_per_epoch(self) -> int:
        return self.sampler.num_samples // self.loader.batch_size


def to_device(batch: Any, device: torch.device) -> Any:
    """Move a batch (tensor or tuple of tensors) to the device without blocking the host."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    return type(batch)(to_device(b, device) for b in batch)
