"""Patch embedding (image -> tokens) and its inverse (tokens -> image)."""
from __future__ import annotations

import torch
from torch import nn


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, H/p * W/p, hidden) by a stride-p convolution; tokens row-major (key ``proj``)."""

    def __init__(self, in_channels: int, hidden_size: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def init_weights(self) -> None:
        """Initialise the convolution like a Linear layer (xavier on the flattened kernel), as DiT."""
        nn.init.xavier_uniform_(self.proj.weight.view(self.proj.weight.shape[0], -1))
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.patch_size or x.shape[-2] % self.patch_size:
            raise ValueError(f"input {tuple(x.shape[-2:])} is not divisible by patch size {self.patch_size}")
        return self.proj(x).flatten(2).transpose(1, 2)


def unpatchify(tokens: torch.Tensor, patch_size: int, channels: int) -> torch.Tensor:
    """(B, h*w, p*p*C) row-major tokens on a square grid -> (B, C, h*p, w*p)."""
    b, n, _ = tokens.shape
    side = int(round(n ** 0.5))
    if side * side != n:
        raise ValueError(f"unpatchify needs a square token grid, got {n} tokens")
    p = patch_size
    x = tokens.reshape(b, side, side, p, p, channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(b, channels, side * p, side * p)
