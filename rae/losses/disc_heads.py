"""Trainable heads of the DINO discriminator: 1-D convolutions over a token map -> one logit per token.

Facts from RAE's ``disc/dinodisc.py`` (after StyleGAN-T): per head, a kernel-1 block, a residual
kernel-``k`` block (k = 9), then a kernel-1 convolution to one channel; each block is circular-padded
convolution, normalisation, LeakyReLU(0.2); every convolution is spectrally normalised.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class LocalBatchNorm(nn.Module):
    """RAE's ``BatchNormLocal`` with its virtual batch of one sample: each sample's channels are
    normalised over its tokens (biased variance, float32), then scaled and shifted per channel."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, N) -> (B, C, N) in float32."""
        x = x.float()
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, unbiased=False, keepdim=True)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight[:, None] + self.bias[:, None]


def conv1d(channels_in: int, channels_out: int, kernel_size: int, spectral: bool) -> nn.Module:
    """Circular-padded 1-D convolution keeping the token count, spectrally normalised on request."""
    conv = nn.Conv1d(channels_in, channels_out, kernel_size, padding=kernel_size // 2, padding_mode="circular")
    return spectral_norm(conv, n_power_iterations=1, eps=1e-12) if spectral else conv


class ConvBlock(nn.Sequential):
    """conv -> LocalBatchNorm -> LeakyReLU(0.2)."""

    def __init__(self, channels: int, kernel_size: int, eps: float, spectral: bool) -> None:
        super().__init__(conv1d(channels, channels, kernel_size, spectral), LocalBatchNorm(channels, eps),
                         nn.LeakyReLU(0.2))


class Residual(nn.Module):
    """(f(x) + x) / sqrt(2)."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.fn(x) + x) / math.sqrt(2.0)


class DiscHead(nn.Module):
    """Token map (B, C, N) -> logits (B, N)."""

    def __init__(self, channels: int, kernel_size: int = 9, eps: float = 1e-6, spectral: bool = True) -> None:
        super().__init__()
        self.block = ConvBlock(channels, 1, eps, spectral)
        self.residual = Residual(ConvBlock(channels, kernel_size, eps, spectral))
        self.out = conv1d(channels, 1, 1, spectral)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(self.residual(self.block(tokens))).squeeze(1)
