"""The dimension-dependent time shift of RAE (Sec. 4; after SD3): more latent dimensions, more time near noise.

t' = s t / (1 + (s - 1) t) with s = sqrt(latent_dim / base_dim); t = 1 is noise, so s > 1 moves
training and sampling times towards the noise end while keeping 0 and 1 fixed.
"""
from __future__ import annotations

import math

import torch

BASE_DIM = 4096


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """t' = s t / (1 + (s - 1) t); s = 1 is the identity."""
    if shift <= 0:
        raise ValueError(f"time shift must be positive, got {shift}")
    return shift * t / (1 + (shift - 1) * t)


def unshift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """The inverse of `shift_time`: the unshifted time that ``shift`` maps onto ``t``."""
    if shift <= 0:
        raise ValueError(f"time shift must be positive, got {shift}")
    return t / (shift - (shift - 1) * t)


def dimension_shift(latent_dim: int, base_dim: int = BASE_DIM) -> float:
    """s = sqrt(latent_dim / base_dim); sqrt(768*16*16 / 4096) = sqrt(48) for RAE at 256 px."""
    if latent_dim <= 0 or base_dim <= 0:
        raise ValueError(f"latent_dim and base_dim must be positive, got {latent_dim}, {base_dim}")
    return math.sqrt(latent_dim / base_dim)
