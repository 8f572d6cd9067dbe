"""The adaLN-Zero transformer block of DiT, SiT, LightningDiT and DiT-DH (paper: DiT Fig. 3)."""
from __future__ import annotations

import torch
from torch import nn

from rae.nn.adaln import AdaLNModulation, modulate
from rae.nn.attention import Attention
from rae.nn.mlp import make_mlp
from rae.nn.norm import block_norm
from rae.nn.rope import RotaryEmbedding2D


class AdaLNBlock(nn.Module):
    """x + gate * attn(modulate(norm(x))), then x + gate * mlp(modulate(norm(x))), all set by a condition.

    Options cover every model here: ``mlp`` "swiglu" | "gelu", ``norm`` "rms" | "layer",
    ``qk_norm`` (same kind as ``norm``), ``shift=False`` for LightningDiT's adaLN without shift.
    The condition is (B, cond_dim) per sample or (B, N, cond_dim) per token (DDT head).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        mlp: str = "swiglu",
        norm: str = "rms",
        qk_norm: bool = False,
        shift: bool = True,
        cond_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.shift = shift
        self.norm1 = block_norm(norm, dim)
        self.attn = Attention(dim, num_heads, qkv_bias=True, qk_norm=norm if qk_norm else None)
        self.norm2 = block_norm(norm, dim)
        self.mlp = make_mlp(mlp, dim, mlp_ratio)
        self.adaLN_modulation = AdaLNModulation(cond_dim or dim, dim, chunks=6 if shift else 4)

    def forward(self, x: torch.Tensor, c: torch.Tensor, rope: RotaryEmbedding2D | None = None) -> torch.Tensor:
        if self.shift:
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c)
        else:
            scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaLN_modulation(c)
            shift_msa = shift_mlp = None
        x = x + gate_msa * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), rope=rope)
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
