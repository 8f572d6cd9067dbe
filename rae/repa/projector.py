"""REPA's projector heads: an MLP per target encoder from backbone tokens to that encoder's features."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class Projector(nn.Sequential):
    """Linear, SiLU, Linear, SiLU, Linear (REPA's ``build_mlp``); key names ``0``, ``2``, ``4`` as released."""

    def __init__(self, hidden_size: int, projector_dim: int, z_dim: int) -> None:
        super().__init__(
            nn.Linear(hidden_size, projector_dim),
            nn.SiLU(),
            nn.Linear(projector_dim, projector_dim),
            nn.SiLU(),
            nn.Linear(projector_dim, z_dim),
        )

    def init_weights(self) -> None:
        """REPA's init: xavier-uniform weights, zero biases (a no-op on the meta device)."""
        for layer in self:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)


class Projectors(nn.ModuleList):
    """One `Projector` per target encoder (``z_dims`` their feature widths); released keys ``projectors.i.*``."""

    def __init__(self, hidden_size: int, projector_dim: int, z_dims: Sequence[int]) -> None:
        if not z_dims:
            raise ValueError("REPA needs at least one target encoder (z_dims is empty)")
        super().__init__(Projector(hidden_size, projector_dim, z) for z in z_dims)
        self.hidden_size = hidden_size

    def init_weights(self) -> None:
        for projector in self:
            projector.init_weights()

    def forward(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """(B, N, hidden_size) tokens -> one (B, N, z_dim) tensor per target encoder."""
        if tokens.ndim != 3 or tokens.shape[-1] != self.hidden_size:
            raise ValueError(
                f"REPA projectors expect backbone tokens (B, N, {self.hidden_size}), got {tuple(tokens.shape)}; "
                "set the alignment's hidden_size to the backbone's token width at encoder_depth"
            )
        return [projector(tokens) for projector in self]
