"""Fixed 2-D sine-cosine position embedding of MAE / DiT."""
from __future__ import annotations

import torch


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(N,) positions -> (N, dim): [sin(pos w_i), cos(pos w_i)], w_i = 10000^(-i / (dim/2))."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = torch.outer(positions.to(torch.float64), omega)
    return torch.cat((torch.sin(angles), torch.cos(angles)), dim=1)


def sincos_2d_position_embedding(dim: int, grid_size: int) -> torch.Tensor:
    """(grid*grid, dim) float32 for row-major tokens: first half encodes the column, second the row.

    Column first follows MAE's ``meshgrid(grid_w, grid_h)``; computed in float64 as MAE's numpy code.
    """
    if dim % 4 != 0:
        raise ValueError(f"2-D sin-cos position embedding needs a width divisible by 4, got {dim}")
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows = coords.repeat_interleave(grid_size)
    cols = coords.repeat(grid_size)
    return torch.cat((sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)), dim=1).float()
