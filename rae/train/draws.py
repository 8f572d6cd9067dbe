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
    """Per-sample draws (``rand``, ``randn``: this rank's rows of the global batch's, on the
    accelerator's device) in the order they are asked for, and draws shared by the whole batch
    (``shared_rand``: on the host, from a generator of their own, for decisions such as whether an
    augmentation is on, which then need no device sync)."""

    def __init__(self, seed: int, step: int, accelerator: Accelerator, global_batch: int) -> None:
        # XLA devices have no torch.Generator: draw there on the CPU and move the draws.
        device = accelerator.device
        self.draw_device = device if device.type in ("cpu", "cuda") else torch.device("cpu")
        self.device = device
        self.generator = torch.Generator(self.draw_device).manual_seed(mix_seed(seed, step))
        self.host_generator = torch.Generator().manual_seed(mix_seed(seed, step, 1))
        self.rows = slice(accelerator.rank, None, accelerator.world_size)
        self.global_batch = global_batch

    def keep(self, draw: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a draw for the whole global batch, on the accelerator's device."""
        return draw[self.rows].to(self.device)

    def rand(self, *shape: int) -> torch.Tensor:
        """U[0, 1) of shape (this rank's samples, *shape)."""
        return self.keep(torch.rand((self.global_batch, *shape), generator=self.generator, device=self.draw_device))

    def randn(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """N(0, 1) of shape (this rank's samples, *shape)."""
        return self.keep(torch.randn((self.global_batch, *shape), generator=self.generator, device=self.draw_device,
                                     dtype=dtype))

    def shared_rand(self, *shape: int) -> torch.Tensor:
        """U[0, 1) of ``shape`` on the host, the same for the whole batch."""
        return torch.rand(shape, generator=self.host_generator)
