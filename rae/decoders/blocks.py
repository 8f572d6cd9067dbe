"""The plain pre-norm ViT block of the RAE decoder (HF ViT-MAE layer): no conditioning, exact GELU."""
from __future__ import annotations

import torch
from torch import nn

from rae.nn.attention import Attention
from rae.nn.mlp import GeluMLP


class Block(nn.Module):
    """x + Attn(LN(x)), then x + MLP(LN(x)); LayerNorms with the decoder's eps (1e-12 in RAE)."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = GeluMLP(dim, mlp_hidden, approximate="none")  # ViT-MAE's "gelu" is the exact (erf) one

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))
