"""The alignment objective of REPA (Yu et al. 2025): L = -E[ 1/N sum_n cos(y*_n, h_phi(h_t,n)) ].

Each backbone token n, projected by h_phi, is compared with the target encoder's token n.

When the backbone's token grid differs from a target encoder's (e.g. SiT-XL/2 on 32x32
latents gives 16x16 tokens, DINOv2-B at 448 px gives 32x32), the target features are
resized to the backbone's grid, with a warning: when shrinking, each backbone token is
matched to the average of the target tokens it covers (area pooling; 32x32 -> 16x16
averages 2x2 blocks); when growing, targets are interpolated bilinearly. The targets carry
no gradient, so resizing them changes no gradient path. REPA itself never resizes: it
picks the encoder resolution so that the grids match.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch.nn import functional as F


def grid_side(num_tokens: int, what: str) -> int:
    """Side of a square token grid of ``num_tokens`` tokens; anything else is an error naming ``what``."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"REPA aligns square token grids, but the {what} gave {num_tokens} tokens")
    return side


def resize_token_grid(tokens: torch.Tensor, side: int) -> torch.Tensor:
    """(B, n*n, C) row-major tokens -> (B, side*side, C), resized as a C-channel image."""
    b, n, c = tokens.shape
    source = grid_side(n, "target encoder")
    if source == side:
        return tokens
    warnings.warn(
        f"REPA: target encoder gives {source}x{source} tokens, the backbone {side}x{side}; "
        f"resizing the targets to {side}x{side} ({'area average' if side < source else 'bilinear'})",
        stacklevel=3,
    )
    grid = tokens.transpose(1, 2).reshape(b, c, source, source).float()
    if side < source:
        grid = F.interpolate(grid, size=(side, side), mode="area")
    else:
        grid = F.interpolate(grid, size=(side, side), mode="bilinear", align_corners=False)
    return grid.flatten(2).transpose(1, 2).to(tokens.dtype)


def negative_cosine(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over batch and tokens of -cos(predicted, target) along channels, in float32."""
    if predicted.shape != target.shape:
        raise ValueError(
            f"projected tokens {tuple(predicted.shape)} and target features {tuple(target.shape)} differ in shape"
        )
    cosine = (F.normalize(predicted.float(), dim=-1) * F.normalize(target.float(), dim=-1)).sum(-1)
    return -cosine.mean()
