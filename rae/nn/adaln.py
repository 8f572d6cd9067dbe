"""Adaptive layer norm (adaLN): a conditioning vector predicts per-channel shift, scale and gate."""
from __future__ import annotations

import torch
from torch import nn


class AdaLNModulation(nn.Sequential):
    """SiLU then Linear(cond_dim -> chunks * dim); key names ``1.weight`` / ``1.bias`` as DiT.

    ``forward`` returns the ``chunks`` modulation tensors, each (B, 1, dim) for a per-sample
    condition (B, cond_dim) or (B, N, dim) for a per-token one (B, N, cond_dim).
    """

    def __init__(self, cond_dim: int, dim: int, chunks: int) -> None:
        super().__init__(nn.SiLU(), nn.Linear(cond_dim, chunks * dim))
        self.chunks = chunks

    def init_weights(self) -> None:
        """adaLN-Zero: start every block as the identity and the output at zero."""
        nn.init.zeros_(self[1].weight)
        nn.init.zeros_(self[1].bias)

    def forward(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if c.ndim == 2:
            c = c.unsqueeze(1)
        return super().forward(c).chunk(self.chunks, dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor | None, scale: torch.Tensor) -> torch.Tensor:
    """x * (1 + scale) + shift; ``shift=None`` is LightningDiT's adaLN without shift."""
    x = x * (1 + scale)
    return x if shift is None else x + shift
