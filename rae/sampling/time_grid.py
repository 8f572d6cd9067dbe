"""Sampling time grids: t = 1 is noise, t = 0 is data; the grid runs from noise to data.

RAE warps a uniform grid by the resolution-dependent shift s (RAE paper, Sec. 4):
t -> s t / (1 + (s - 1) t), which spends more steps near the noise end when s > 1.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

SHIFT_BASE_DIM = 4096
"""The reference dimension of the shift rule s = sqrt(latent_dim / 4096) (RAE's 'time_dist_shift_base')."""


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Warp times in [0, 1] by s t / (1 + (s - 1) t); s = 1 is the identity, 0 and 1 stay fixed."""
    if shift <= 0:
        raise ValueError(f"the time shift must be positive, got {shift}")
    return shift * t / (1 + (shift - 1) * t)


def dimension_shift(latent_shape: Sequence[int], base_dim: int = SHIFT_BASE_DIM) -> float:
    """RAE's shift for a latent of this shape: sqrt(C*h*w / base_dim), sqrt(48) for 768x16x16."""
    return math.sqrt(math.prod(latent_shape) / base_dim)


def resolve_shift(shift: float | str, latent_shape: Sequence[int]) -> float:
    """A number as it is, or ``"auto"``: the dimension-dependent shift of ``latent_shape`` (C, h, w)."""
    if shift == "auto":
        return dimension_shift(latent_shape)
    if isinstance(shift, str):
        raise ValueError(f"shift must be a positive number or 'auto', got {shift!r}")
    return float(shift)


def time_grid(num_steps: int, shift: float = 1.0, start: float = 1.0, end: float = 0.0) -> torch.Tensor:
    """``num_steps`` grid points (float64) from ``start`` down to ``end``, then shifted.

    Computed as ``1 - linspace(1 - start, 1 - end, num_steps)`` like the reference, so the
    default grid is exactly ``1 - linspace(0, 1, num_steps)``; Euler takes num_steps - 1 steps.
    """
    if num_steps < 2:
        raise ValueError(f"a time grid needs num_steps >= 2 points (start and end), got {num_steps}")
    if not 0.0 <= end < start <= 1.0:
        raise ValueError(f"the grid must run from noise to data: 0 <= end < start <= 1, got start={start}, end={end}")
    t = 1 - torch.linspace(1 - start, 1 - end, num_steps, dtype=torch.float64)
    return shift_time(t, shift)
