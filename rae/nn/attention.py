"""Multi-head self-attention through ``scaled_dot_product_attention``, with optional QK-norm and 2-D RoPE."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from rae.nn.norm import qk_norm as make_qk_norm
from rae.nn.rope import RotaryEmbedding2D


class Attention(nn.Module):
    """softmax(q k^T / sqrt(d)) v over all tokens; key names as timm's ``Attention`` (qkv, proj).

    ``heads`` and ``merge`` are the two halves around the attention itself, so that MMDiT can
    attend over two token streams at once; ``out_proj=False`` leaves out ``proj`` where the
    output is never used (MMDiT's last context stream, as released).
    """

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = True, qk_norm: str | None = None, out_proj: bool = True
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"attention width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm = make_qk_norm(qk_norm, self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = make_qk_norm(qk_norm, self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim) if out_proj else None

    def heads(self, x: torch.Tensor, rope: RotaryEmbedding2D | None = None) -> tuple[torch.Tensor, ...]:
        """(B, N, dim) -> q, k, v, each (B, heads, N, head_dim); queries and keys are normed, then rotated."""
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            # The float32 rotation tables would promote half-precision q, k: cast back to v's dtype.
            q, k = rope(q).to(v.dtype), rope(k).to(v.dtype)
        return q, k, v

    def merge(self, out: torch.Tensor) -> torch.Tensor:
        """Attention output (B, heads, N, head_dim) -> (B, N, dim) through the output projection."""
        if self.proj is None:
            raise ValueError("this attention was built with out_proj=False: it has no output to merge")
        return self.proj(out.transpose(1, 2).flatten(2))

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding2D | None = None) -> torch.Tensor:
        """(B, N, dim) -> (B, N, dim)."""
        return self.merge(F.scaled_dot_product_attention(*self.heads(x, rope)))
