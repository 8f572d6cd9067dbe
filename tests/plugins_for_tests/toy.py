"""Toy plugins for tracking tests: a backbone, a guidance rule and an experiment with a known loss.

``toy_tracking.gin`` next to this file runs the experiment through the runner: the loss
halves at every step from ``start``, so the values a test reads back (from Aim, the
terminal table or a browser) are exact.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from rae.experiments.base import Experiment, RunContext
from rae.registry import BACKBONES, EXPERIMENTS, GUIDANCE

GIN_FILE = Path(__file__).with_name("toy_tracking.gin")


@BACKBONES.register("toy_mlp")
class ToyMLP(nn.Module):
    """Two linear layers: a backbone whose width the flat config shows as a column."""

    def __init__(self, hidden_size: int = 8) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.net = nn.Sequential(nn.Linear(4, hidden_size), nn.SiLU(), nn.Linear(hidden_size, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@GUIDANCE.register("toy_guidance")
class ToyGuidance:
    """A guidance rule holding a guide model, as autoguidance does: a plugin nested in a plugin."""

    def __init__(self, guide: nn.Module | None = None, scale: float = 1.0) -> None:
        self.guide = guide
        self.scale = scale


class ToyFailure(RuntimeError):
    """Raised on purpose by `ToyLoss` at ``fail_at``, to test how a crashed run is recorded."""


@EXPERIMENTS.register("toy_loss")
@dataclass(eq=False)
class ToyLoss(Experiment):
    """Tracks ``loss = start / 2**step`` for ``steps`` steps, then a two-image grid with captions."""

    kind = "toy"
    backbone: nn.Module
    steps: int = 4
    start: float = 1.0
    fail_at: int | None = None

    def models(self) -> dict[str, nn.Module]:
        return {"backbone": self.backbone}

    def run(self, ctx: RunContext) -> dict[str, Any]:
        for step in range(self.steps):
            if step == self.fail_at:
                raise ToyFailure(f"toy failure at step {step}")
            ctx.tracker.track("loss", self.start / 2**step, step)
        grid = torch.linspace(0, 1, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
        ctx.tracker.track_images("samples", grid, self.steps, captions=["class 1", "class 7"])
        return {"final_loss": self.start / 2 ** (self.steps - 1)}


# ---------------------------------------------------------------- helpers the tracking tests share
@pytest.fixture(scope="session")
def aim_template(tmp_path_factory) -> Path:
    """An initialised, empty Aim repo, made once: Aim's init runs its database migrations in a subprocess."""
    from aim import Repo

    folder = tmp_path_factory.mktemp("aim_template")
    Repo(str(folder), init=True)
    return folder


@pytest.fixture
def aim_dir(tmp_path: Path, aim_template: Path) -> Path:
    """A fresh Aim repo (a copy of the template) in this test's ``tmp_path``."""
    shutil.copytree(aim_template / ".aim", tmp_path / ".aim")
    return tmp_path


def run_toy(run_root: Path, *bindings: str) -> int:
    """Run ``toy_tracking.gin`` through the runner, in this process, into ``run_root``; its exit code."""
    from rae.runner import main

    args = ["--import", __name__, "--gin", str(GIN_FILE), "--gin_param", f"run.run_root = '{run_root}'"]
    for binding in bindings:
        args += ["--gin_param", binding]
    return main(args)


def aim_runs(repo: Path, query: str = "") -> list:
    """The Aim runs of ``repo`` that match an Aim QL query, oldest first, read through Aim's query API.

    A new `Repo` each call: the pooled one a tracker in this process holds caches what it read.
    """
    from aim import Repo
    from aim.sdk.types import QueryReportMode

    found = Repo(str(repo)).query_runs(query, report_mode=QueryReportMode.DISABLED)
    return sorted((item.run for item in found.iter_runs()), key=lambda run: run.creation_time)
