"""The encoder interface: a frozen representation model, images in [0, 1] -> patch tokens."""
from __future__ import annotations

import abc

import torch
from torch import nn
from torch.nn import functional as F

from rae.weights import Pretrained


class Encoder(nn.Module, Pretrained):
    """Frozen (``requires_grad=False``, eval mode) image encoder returning patch tokens only.

    Subclasses set the attributes below in ``__init__`` and implement ``tokens``; the
    resize to ``input_size`` and the pixel normalisation happen here, once, for all.
    """

    patch_size: int
    input_size: int
    hidden_size: int
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]

    @property
    def token_grid(self) -> tuple[int, int]:
        side = self.input_size // self.patch_size
        return side, side

    def freeze(self) -> None:
        """Encoders never train: no gradients, eval mode forever (see ``train``)."""
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "Encoder":
        return super().train(False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images of any size -> normalised pixels at ``input_size`` (bicubic, as RAE)."""
        if images.shape[-2:] != (self.input_size, self.input_size):
            images = F.interpolate(images, size=(self.input_size, self.input_size),
                                   mode="bicubic", align_corners=False)
        mean = images.new_tensor(self.pixel_mean).view(1, 3, 1, 1)
        std = images.new_tensor(self.pixel_std).view(1, 3, 1, 1)
        return (images - mean) / std

    @abc.abstractmethod
    def tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels (B, 3, input_size, input_size) -> patch tokens (B, N, hidden_size)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], (B, 3, H, W) -> patch tokens (B, N, hidden_size)."""
        return self.tokens(self.preprocess(images))
