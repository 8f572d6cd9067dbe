"""Latent normalisation statistics (``stat.pt``) in every layout RAE has published.

RAE's ``calculate_stat.py`` keeps one mean and variance per latent position, shape (C, h, w);
the released DINOv2-B ``stat.pt`` holds only ``var`` (RAE issue #33: its diffusion models were
trained without a mean, and the reference then subtracts nothing); older files and our
``per_channel`` option hold one value per channel, (1, C, 1, 1) or (C,). Whatever the layout,
the statistics are expanded to the latent's (1, C, h, w), where ``(z - mean) / sqrt(var + eps)``
is exactly the reference's arithmetic (an absent mean subtracts zero).
"""
from __future__ import annotations

from pathlib import Path

import torch

from rae.weights import UnusableWeights, load_file_named

STATS_KEYS = ("mean", "var")


def accepted_shapes(latent_shape: tuple[int, int, int]) -> list[tuple[int, ...]]:
    """The tensor shapes a ``mean`` or ``var`` may have for latents (C, h, w)."""
    c, h, w = latent_shape
    return [(c, h, w), (1, c, h, w), (1, c, 1, 1), (c,)]


def expand_stat(value: torch.Tensor, latent_shape: tuple[int, int, int]) -> torch.Tensor | None:
    """``value`` as (1, C, h, w) float32, or None when its shape is not an accepted layout."""
    c, h, w = latent_shape
    if tuple(value.shape) in {(c, h, w), (1, c, h, w)}:
        return value.reshape(1, c, h, w).float()
    if tuple(value.shape) in {(1, c, 1, 1), (c,)}:
        return value.reshape(1, c, 1, 1).expand(1, c, h, w).float()
    return None


def read_latent_stats(path: str | Path, latent_shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, var), each (1, C, h, w), from a ``stat.pt``; a missing or None ``mean`` reads as zeros."""
    stats = load_file_named(path, "latent stats (a dict with 'var' and optionally 'mean')")
    found = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else v for k, v in stats.items()} \
        if isinstance(stats, dict) else type(stats).__name__
    accepted = " or ".join(str(s) for s in accepted_shapes(latent_shape))

    def refuse(problem: str) -> UnusableWeights:
        return UnusableWeights(
            f"{path}: {problem}. Found {found}; expected a dict with 'var' (and optionally 'mean', absent or None "
            f"to subtract nothing) of shape {accepted}, for latents {tuple(latent_shape)}"
        )

    if not isinstance(stats, dict) or not isinstance(stats.get("var"), torch.Tensor):
        raise refuse("no 'var' tensor")
    extra = sorted(set(stats) - set(STATS_KEYS))
    if extra:
        raise refuse(f"unexpected keys {extra}")
    var = expand_stat(stats["var"], latent_shape)
    mean = stats.get("mean")
    if mean is not None and not isinstance(mean, torch.Tensor):
        raise refuse(f"'mean' is a {type(mean).__name__}, not a tensor")
    mean = torch.zeros(1, *latent_shape) if mean is None else expand_stat(mean, latent_shape)
    if var is None or mean is None:
        raise refuse("a shape that fits neither the channels nor the token grid")
    return mean, var
