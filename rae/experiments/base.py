"""What every experiment offers the runner; `RunContext` (`rae.run_context`), what the runner hands it."""
from __future__ import annotations

import abc
import logging
from typing import Any

import torch
from torch import nn

from rae.run_context import RunContext
from rae.train.rng import seed_rngs
from rae.weights import load_pretrained_weights


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

    def check(self, world_size: int) -> None:
        """Raise ValueError for a config this experiment cannot run on ``world_size`` ranks, using the
        config alone (no files, no weights): the runner calls it before any run folder is made."""

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


def configured_size(dataset: object) -> int | None:
    """A dataset's length when its config fixes it (a ``size`` attribute, e.g. the embedded data);
    None when only reading files would tell (an image folder, a latent cache)."""
    size = getattr(dataset, "size", None)
    return size if isinstance(size, int) and not isinstance(size, bool) else None


def check_positive(owner: str, **values: int | float | None) -> None:
    """Raise naming ``owner.name`` for each value given that is not positive (None means unset)."""
    for name, value in values.items():
        if value is not None and not value > 0:
            raise ValueError(f"{owner}.{name} = {value!r}: expected a positive number")


def count_parameters(model: nn.Module) -> int:
    """Parameters of a model, counted once even when shared (works on the meta device)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def seed_everything(seed: int, rank: int = 0) -> torch.Generator:
    """Seed torch and Python for this rank and return a generator for data order."""
    seed_rngs(seed + rank)
    return torch.Generator().manual_seed(seed)
