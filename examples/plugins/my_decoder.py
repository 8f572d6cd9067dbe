"""A decoder plugin: latents (B, C, h, w) -> pixels, the trainable half of the RAE autoencoder.

Subclass `rae.decoders.base.Decoder` and take ``in_channels`` and ``token_grid`` as keyword
arguments: the autoencoder builds the decoder for its encoder (gin: ``rae.decoder = @decoder.NAME``,
no call). Set ``in_channels``, ``token_grid``, ``patch_size`` and ``out_channels`` (``image_size`` is
token grid x patch size) and implement ``last_layer`` (the weight where stage 1's adaptive GAN weight
compares gradient norms) and ``forward``. The output is in the encoder's normalised pixel space,
``(image - pixel_mean) / pixel_std``; the autoencoder maps it back to [0, 1].

    python tools/run.py --import examples/plugins/my_decoder.py --gin examples/plugins/my_decoder.gin
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from rae.decoders.base import Decoder
from rae.registry import DECODERS


@DECODERS.register("linear_patches")
class LinearPatches(Decoder):
    """Each latent position -> one patch of pixels by a single linear map (a 1x1 convolution, then pixel shuffle)."""

    def __init__(self, in_channels: int, token_grid: tuple[int, int], patch_size: int = 8,
                 out_channels: int = 3) -> None:
        super().__init__()
        self.in_channels, self.token_grid = in_channels, (int(token_grid[0]), int(token_grid[1]))
        self.patch_size, self.out_channels = patch_size, out_channels
        self.proj = nn.Conv2d(in_channels, out_channels * patch_size**2, kernel_size=1)

    @property
    def last_layer(self) -> nn.Parameter:
        return self.proj.weight

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        self.check_latent(latent)
        return F.pixel_shuffle(self.proj(latent), self.patch_size)
