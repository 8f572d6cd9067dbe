"""Sampling time grids: t = 1 is noise, t = 0 is data; the grid runs from noise to data.

RAE warps a uniform grid by the dimension-dependent shift s (``rae.transport.shift``):
t -> s t / (1 + (s - 1) t), which spends more steps near the noise end when s > 1.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from rae.transport.shift import dimension_shift, shift_time


def resolve_shift(shift: float | str, latent_shape: Sequence[int]) -> float:
    """A number as it is, or ``"auto"``: sqrt(C*h*w / 4096) for latents of shape (C, h, w)."""
    if shift == "auto":
        return dimension_shift(math.prod(latent_shape))
    if isinstance(shift, str) or shift <= 0:
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
