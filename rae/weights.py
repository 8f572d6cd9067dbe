"""Pretrained weights are loaded apart from construction, so architectures build offline.

A module that holds pretrained parts implements `Pretrained.load_pretrained`; the
runner calls it for every such module before an experiment runs, never in a dry run.
"""
from __future__ import annotations

import abc
import logging

from torch import nn


class WeightsNotFound(FileNotFoundError):
    """Pretrained weights could not be found; the message says what was tried and how to supply them."""


class Pretrained(abc.ABC):
    """Mixin for modules whose weights come from elsewhere (hub id, local folder, file)."""

    weights_loaded: bool = False

    @abc.abstractmethod
    def load_pretrained(self, allow_random: bool, log: logging.Logger) -> None:
        """Load weights in place; without any, raise `WeightsNotFound` unless ``allow_random``."""


def load_pretrained_weights(model: nn.Module, allow_random: bool, log: logging.Logger) -> None:
    """Call ``load_pretrained`` once on every `Pretrained` submodule of ``model``."""
    for module in model.modules():
        if isinstance(module, Pretrained) and not module.weights_loaded:
            module.load_pretrained(allow_random=allow_random, log=log)
            module.weights_loaded = True


def missing_weights(what: str, tried: str, how: str, allow_random: bool, log: logging.Logger) -> None:
    """The one policy for absent weights: refuse, or with explicit permission warn loudly."""
    if not allow_random:
        raise WeightsNotFound(
            f"no pretrained weights for {what}: tried {tried}. {how} "
            "(or set `run.allow_random_weights = True` to run with random weights, for tests only)"
        )
    log.warning("RANDOM WEIGHTS for %s: tried %s; allowed by run.allow_random_weights", what, tried)
