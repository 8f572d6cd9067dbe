"""Timestep embedders: fixed frequency features of t, then a two-layer MLP (key names ``mlp.0``, ``mlp.2``).

Two feature maps are in use: DiT/SiT's sinusoidal one (``SinusoidalTimestepEmbedder``) and the
Gaussian Fourier one of RAE's LightningDiT and DiT-DH (``FourierTimestepEmbedder``).
"""
from __future__ import annotations

import abc
import math

import torch
from torch import nn


class TimestepEmbedder(nn.Module, abc.ABC):
    """t (B,) -> (B, hidden): ``features(t)`` (B, feature_dim), then Linear, SiLU, Linear."""

    def __init__(self, feature_dim: int, hidden_size: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(feature_dim, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    @abc.abstractmethod
    def features(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) times -> (B, feature_dim) fixed features."""

    def init_weights(self) -> None:
        """DiT's init: MLP weights N(0, 0.02), biases zero."""
        for layer in (self.mlp[0], self.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        features = self.features(t)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class SinusoidalTimestepEmbedder(TimestepEmbedder):
    """[cos(t f_i), sin(t f_i)] with f_i = max_period^(-i / half), as DiT and SiT."""

    def __init__(self, hidden_size: int, frequency_size: int = 256, max_period: float = 10000.0) -> None:
        super().__init__(frequency_size, hidden_size)
        self.frequency_size = frequency_size
        self.max_period = max_period

    def features(self, t: torch.Tensor) -> torch.Tensor:
        half = self.frequency_size // 2
        freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, device=t.device).float() / half)
        args = t.float()[:, None] * freqs[None]
        features = torch.cat((torch.cos(args), torch.sin(args)), dim=-1)
        if self.frequency_size % 2:
            features = torch.cat((features, torch.zeros_like(features[:, :1])), dim=-1)
        return features


class FourierTimestepEmbedder(TimestepEmbedder):
    """[sin(2 pi t W), cos(2 pi t W)] with frozen random W ~ N(0, scale^2) (a parameter ``W``, as released)."""

    def __init__(self, hidden_size: int, embedding_size: int = 256, scale: float = 1.0) -> None:
        super().__init__(2 * embedding_size, hidden_size)
        self.scale = scale
        # A frozen parameter, not a buffer: released checkpoints and parameter counts include it.
        self.W = nn.Parameter(torch.empty(embedding_size), requires_grad=False)

    def init_weights(self) -> None:
        super().init_weights()
        nn.init.normal_(self.W, std=self.scale)

    def features(self, t: torch.Tensor) -> torch.Tensor:
        args = t[:, None] * self.W[None, :] * 2 * torch.pi
        return torch.cat((torch.sin(args), torch.cos(args)), dim=-1)
