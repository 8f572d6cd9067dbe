"""2-D rotary position embedding (RoPE) for a square token grid, in the EVA / LightningDiT / DDT layout.

Layout of one head's channels (head_dim = 4k): the first half is rotated by the token's row,
the second half by its column; inside each half, channel pairs (2i, 2i + 1) form one rotation
with frequency theta^(-2i / (head_dim / 2)). Tokens are row-major (index = row * grid + col),
as a patch embedding flattens them.
"""
from __future__ import annotations

import torch
from torch import nn


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): a quarter turn of every channel pair."""
    pairs = x.unflatten(-1, (-1, 2))
    first, second = pairs.unbind(-1)
    return torch.stack((-second, first), dim=-1).flatten(-2)


class RotaryEmbedding2D(nn.Module):
    """Rotates queries/keys (B, heads, grid*grid, head_dim) by their 2-D grid position."""

    def __init__(self, head_dim: int, grid_size: int, theta: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 4 != 0:
            raise ValueError(f"2-D RoPE needs a head dimension divisible by 4, got {head_dim}")
        self.head_dim = head_dim
        self.grid_size = grid_size
        self.theta = theta
        cos, sin = self.tables()
        # Derived from the config, so not saved: released checkpoints' copies are checked on load.
        self.register_buffer("freqs_cos", cos, persistent=False)
        self.register_buffer("freqs_sin", sin, persistent=False)

    def tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of every (token, channel) rotation angle, each (grid*grid, head_dim)."""
        axis_dim = self.head_dim // 2
        freqs = 1.0 / (self.theta ** (torch.arange(0, axis_dim, 2).float() / axis_dim))
        positions = torch.arange(self.grid_size).float()
        angles = torch.outer(positions, freqs).repeat_interleave(2, dim=-1)  # (grid, axis_dim)
        g = self.grid_size
        by_row = angles[:, None, :].expand(g, g, axis_dim)
        by_col = angles[None, :, :].expand(g, g, axis_dim)
        full = torch.cat((by_row, by_col), dim=-1).reshape(g * g, self.head_dim)
        return full.cos(), full.sin()

    def init_weights(self) -> None:
        """Recompute the tables (after ``to_empty`` from the meta device)."""
        cos, sin = self.tables()
        self.freqs_cos.copy_(cos)
        self.freqs_sin.copy_(sin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != self.freqs_cos.shape:
            raise ValueError(
                f"RoPE built for {self.grid_size}x{self.grid_size} tokens of head dim {self.head_dim} "
                f"got (..., tokens, head_dim) = {tuple(x.shape[-2:])}"
            )
        return x * self.freqs_cos + rotate_pairs(x) * self.freqs_sin
