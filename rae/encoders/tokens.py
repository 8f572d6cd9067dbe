"""Patch tokens <-> latent maps: RAE's latent is the token sequence laid out on its grid."""
from __future__ import annotations

import torch


def tokens_to_latent(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h*w, C) raster-ordered tokens -> (B, C, h, w), as RAE reshapes encoder output."""
    b, n, c = tokens.shape
    h, w = grid
    if n != h * w:
        raise ValueError(f"tokens_to_latent: {n} tokens do not fill a {h}x{w} grid (expected {h * w})")
    return tokens.transpose(1, 2).reshape(b, c, h, w)


def latent_to_tokens(latent: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h*w, C) raster-ordered tokens; the inverse of `tokens_to_latent`."""
    return latent.flatten(2).transpose(1, 2)
