"""The random draws of one training step, made for the whole global batch; each rank keeps its rows.

They come from a generator seeded by (seed, step): the same on every rank and after a resume,
with no state to checkpoint. The data sampler gives rank r the samples at positions r, r + W, ...
of the global batch (W ranks), so taking those rows draws for every sample exactly what one
process would: any number of ranks, and any split into micro-batches, trains as one process
with the same global batch.
"""
from __future__ import annotations

import torch

from rae.accelerator import Accelerator
from rae.data.loader import mix_seed


class StepDraws:
    """Per-sample draws (``rand``, ``randn``: this rank's rows of the global batch's) and draws shared
    by the whole batch (``shared_rand``), in the order they are asked for, on the accelerator's device."""

    def __init__(self, seed: int, step: int, accelerator: Accelerator, global_batch: int) -> None:
        # XLA devices have no torch.Generator: draw there on the CPU and move the draws.
        device = accelerator.device
        self.draw_device = device if device.type in ("cpu", "cuda") else torch.device("cpu")
        self.device = device
        self.generator = torch.Generator(self.draw_device).manual_seed(mix_seed(seed, step))
        self.rows = slice(accelerator.rank, None, accelerator.world_size)
        self.global_batch = global_batch

    def rand(self, *shape: int) -> torch.Tensor:
        """U[0, 1) of shape (this rank's samples, *shape)."""
        draw = torch.rand((self.global_batch, *shape), generator=self.generator, device=self.draw_device)
        return draw[self.rows].to(self.device)

    def randn(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """N(0, 1) of shape (this rank's samples, *shape)."""
        draw = torch.randn((self.global_batch, *shape), generator=self.generator, device=self.draw_device, dtype=dtype)
        return draw[self.rows].to(self.device)

    def shared_rand(self, *shape: int) -> torch.Tensor:
        """U[0, 1) of ``shape``, the same for the whole batch (e.g. whether an augmentation is on)."""
        return torch.rand(shape, generator=self.generator, device=self.draw_device).to(self.device)
