"""A registered experiment that tracks a known loss curve, to test tracking through the runner.

``toy_tracking.gin`` next to this file runs it: the loss halves at every step from ``start``,
so the last and lowest values a test reads back (from Aim or a browser) are exact.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from rae.experiments.base import Experiment, RunContext
from rae.registry import BACKBONES, EXPERIMENTS

GIN_FILE = Path(__file__).with_name("toy_tracking.gin")


@BACKBONES.register("toy_mlp")
class ToyMLP(nn.Module):
    """Two linear layers: a backbone with a parameter the flat config shows as a column."""

    def __init__(self, hidden_size: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, hidden_size), nn.SiLU(), nn.Linear(hidden_size, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@EXPERIMENTS.register("toy_loss")
class ToyLoss(Experiment):
    """Tracks ``loss = start / 2**step`` for ``steps`` steps, and a sample grid with captions."""

    kind = "toy"

    def __init__(self, backbone: nn.Module, steps: int = 4, start: float = 1.0) -> None:
        self.backbone = backbone
        self.steps = steps
        self.start = start

    def models(self) -> dict[str, nn.Module]:
        return {"backbone": self.backbone}

    def run(self, ctx: RunContext) -> dict[str, Any]:
        for step in range(self.steps):
            ctx.tracker.track("loss", self.start / 2**step, step)
        grid = torch.linspace(0, 1, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
        ctx.tracker.track_images("samples", grid, self.steps, captions=["class 1", "class 7"])
        return {"final_loss": self.start / 2 ** (self.steps - 1)}
