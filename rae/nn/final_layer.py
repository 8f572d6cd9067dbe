"""The output layer of DiT-style models: adaLN (shift and scale, no gate), then a linear map to patches."""
from __future__ import annotations

import torch
from torch import nn

from rae.nn.adaln import AdaLNModulation, modulate
from rae.nn.norm import block_norm


class FinalLayer(nn.Module):
    """(B, N, dim) tokens -> (B, N, patch*patch*out_channels); zero-initialised (adaLN-Zero)."""

    def __init__(self, dim: int, patch_size: int, out_channels: int, norm: str = "rms",
                 cond_dim: int | None = None) -> None:
        super().__init__()
        self.norm_final = block_norm(norm, dim)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = AdaLNModulation(cond_dim or dim, dim, chunks=2)

    def init_weights(self) -> None:
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c)
        return self.linear(modulate(self.norm_final(x), shift, scale))
