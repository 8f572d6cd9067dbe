"""A dataset plugin: class-labelled images for every experiment that reads images.

A dataset is a map-style dataset with the protocol `rae.data.base.LabelledImages`: ``num_classes``,
``resolution``, ``__len__`` and ``__getitem__(i) -> (image, label)``, the image a (3, R, R) float tensor
in [0, 1], the label an int below ``num_classes``. Subclassing ``torch.utils.data.Dataset`` is usual but
not required. Read files lazily (in ``__getitem__`` or on first use), not in ``__init__``, so that a
``--dry_run`` works without the data; ``size`` fixes the length in the config (the runner checks that
a global batch fits in it before the run starts).

    python tools/run.py --import examples/plugins/my_dataset.py --gin examples/plugins/my_dataset.gin
"""
from __future__ import annotations

import math

import torch

from rae.registry import DATASETS


@DATASETS.register("gratings")
class Gratings(torch.utils.data.Dataset):
    """Sine gratings: class c is the orientation c * pi / num_classes; phase and colour vary per image."""

    def __init__(self, size: int = 256, resolution: int = 32, num_classes: int = 8, frequency: float = 3.0,
                 seed: int = 0) -> None:
        if size < 1 or resolution < 1 or num_classes < 1:
            raise ValueError(f"gratings: size, resolution and num_classes must be positive, got {size}, "
                             f"{resolution}, {num_classes}")
        self.size, self.resolution, self.num_classes = size, resolution, num_classes
        self.frequency, self.seed = frequency, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < self.size:
            raise IndexError(f"gratings: index {index} out of range for {self.size} images")
        label = index % self.num_classes
        draws = torch.rand(4, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + index))
        angle = label * math.pi / self.num_classes
        axis = torch.linspace(-1, 1, self.resolution)
        y, x = torch.meshgrid(axis, axis, indexing="ij")
        along = x * math.cos(angle) + y * math.sin(angle)
        wave = torch.sin(math.pi * self.frequency * along + 2 * math.pi * draws[0])
        colour = 0.2 + 0.8 * draws[1:].view(3, 1, 1)
        return (0.5 + 0.5 * wave) * colour, label
