"""What every dataset yields: (image, label) with the image a float tensor in [0, 1]."""
from __future__ import annotations

from typing import Protocol

import torch


class LabelledImages(Protocol):
    """A map-style dataset of class-labelled images, (3, R, R) float in [0, 1] and an int label."""

    num_classes: int
    resolution: int

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]: ...
