"""Feed-forward layers of the transformer blocks: SwiGLU (LightningDiT) and tanh-GELU (DiT, SiT)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

MLPS = ("swiglu", "gelu")


class SwiGLU(nn.Module):
    """w3(silu(x W1) * x W2), with W1 and W2 fused into one ``w12`` projection."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


class GeluMLP(nn.Module):
    """fc2(gelu(fc1 x)); key names as timm's ``Mlp``. DiT uses the tanh GELU, ViT-MAE the exact one."""

    def __init__(self, dim: int, hidden: int, approximate: str = "tanh") -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate=approximate)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def make_mlp(kind: str, dim: int, mlp_ratio: float) -> nn.Module:
    """The block MLP; SwiGLU keeps the parameter count of a GELU MLP by using 2/3 of its width."""
    hidden = int(dim * mlp_ratio)
    if kind == "swiglu":
        return SwiGLU(dim, int(2 / 3 * hidden))
    if kind == "gelu":
        return GeluMLP(dim, hidden)
    raise ValueError(f"unknown mlp {kind!r}; expected one of {', '.join(MLPS)}")
