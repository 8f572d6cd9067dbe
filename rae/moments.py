"""Streaming per-channel mean and variance in float64 (Chan et al.'s parallel update)."""
from __future__ import annotations

import torch


class RunningMoments:
    """Accumulates (count, mean, M2) per channel; batches and ranks merge exactly."""

    def __init__(self, channels: int) -> None:
        self.count = 0
        self.mean = torch.zeros(channels, dtype=torch.float64)
        self.m2 = torch.zeros(channels, dtype=torch.float64)

    def update(self, values: torch.Tensor) -> None:
        """Add samples laid out as (..., C): every leading position is one sample per channel."""
        x = values.detach().reshape(-1, values.shape[-1]).to(device="cpu", dtype=torch.float64)
        n = x.shape[0]
        if n == 0:
            return
        mean = x.mean(0)
        m2 = ((x - mean) ** 2).sum(0)
        self.merge(n, mean, m2)

    def merge(self, n: int, mean: torch.Tensor, m2: torch.Tensor) -> None:
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total

    @property
    def var(self) -> torch.Tensor:
        """Population variance (the normalisation RAE applies divides by sqrt(var + eps))."""
        if self.count == 0:
            raise ValueError("no samples were accumulated")
        return self.m2 / self.count

    def state(self) -> dict[str, torch.Tensor | int]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state(self, state: dict) -> None:
        self.count, self.mean, self.m2 = int(state["count"]), state["mean"].double(), state["m2"].double()
