"""Multi-head self-attention through ``scaled_dot_product_attention``, with optional QK-norm and 2-D RoPE."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from rae.nn.norm import qk_norm as make_qk_norm
from rae.nn.rope import RotaryEmbedding2D


class Attention(nn.Module):
    """softmax(q k^T / sqrt(d)) v over all tokens; key names as timm's ``Attention`` (qkv, proj)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, qk_norm: str | None = None) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"attention width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm = make_qk_norm(qk_norm, self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = make_qk_norm(qk_norm, self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding2D | None = None) -> torch.Tensor:
        """(B, N, dim) -> (B, N, dim); queries and keys are normed, then rotated."""
        b, n, dim = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            # The float32 rotation tables would promote half-precision q, k: cast back to v's dtype.
            q, k = rope(q).to(v.dtype), rope(k).to(v.dtype)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, dim))
