"""What every experiment offers the runner, and what the runner hands every experiment."""
from __future__ import annotations

import abc
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rae.accelerator import Accelerator
from rae.tracking.tracker import Tracker
from rae.weights import load_pretrained_weights


@dataclass
class RunContext:
    """Everything an experiment needs from outside its own config."""

    accelerator: Accelerator
    tracker: Tracker
    run_dir: Path
    seed: int = 0
    allow_random_weights: bool = False
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("rae"))


class Experiment(abc.ABC):
    """A unit of work: built by gin from its config, then ``run`` with a context."""

    kind: str = "experiment"

    def models(self) -> dict[str, nn.Module]:
        """Named models this experiment builds, for ``--dry_run`` counts and weight loading."""
        return {}

    def latent_shape(self) -> tuple[int, ...] | None:
        """(C, h, w) of the latents this experiment works on, when it has any."""
        return None

    def tags(self) -> list[str]:
        """Names that group this run in the tracker: the kind plus plugin names."""
        return [self.kind]

    def load_weights(self, allow_random: bool, log: logging.Logger) -> None:
        """Load every pretrained part (encoders, perception nets, released checkpoints)."""
        for model in self.models().values():
            load_pretrained_weights(model, allow_random=allow_random, log=log)

    @abc.abstractmethod
    def run(self, ctx: RunContext) -> dict[str, Any]:
        """Do the work; return a summary (paths written, final metrics) for the runner to print."""


class AutoencoderExperiment(Experiment):
    """An experiment whose one model is ``self.autoencoder`` (encoding or reconstructing a dataset)."""

    autoencoder: nn.Module

    def models(self) -> dict[str, nn.Module]:
        return {"autoencoder": self.autoencoder}

    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.autoencoder.latent_shape)

    def tags(self) -> list[str]:
        return [self.kind, type(self.autoencoder).__name__]


def count_parameters(model: nn.Module) -> int:
    """Parameters of a model, counted once even when shared (works on the meta device)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def seed_everything(seed: int, rank: int = 0) -> torch.Generator:
    """Seed torch for this rank and return a generator for data order."""
    torch.manual_seed(seed + rank)
    return torch.Generator().manual_seed(seed)
