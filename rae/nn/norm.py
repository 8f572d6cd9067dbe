"""Normalisation layers of the diffusion transformers: RMSNorm and the non-affine LayerNorm of DiT."""
from __future__ import annotations

import torch
from torch import nn

NORMS = ("rms", "layer")


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, computed in float32 and cast back (as LightningDiT)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def init_weights(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def check_norm(kind: str) -> str:
    """Fail early, naming the choices, on an unknown normalisation kind."""
    if kind not in NORMS:
        raise ValueError(f"unknown norm {kind!r}; expected one of {', '.join(NORMS)}")
    return kind


def block_norm(kind: str, dim: int) -> nn.Module:
    """The pre-attention / pre-MLP norm of an adaLN block: RMSNorm, or LayerNorm without affine (DiT)."""
    if check_norm(kind) == "rms":
        return RMSNorm(dim)
    return nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)


def qk_norm(kind: str, head_dim: int) -> nn.Module:
    """Per-head query/key norm: RMSNorm, or an affine LayerNorm with torch's default eps (as timm)."""
    if check_norm(kind) == "rms":
        return RMSNorm(head_dim)
    return nn.LayerNorm(head_dim)
