"""The guidance interface: turn network calls into the velocity function a sampler integrates.

A guidance rule mixes a guided prediction with a reference one, v = v_ref + scale (v - v_ref),
only where t_min <= t <= t_max (elsewhere the plain conditional prediction). Mixing is done
on velocities: conversion from any prediction is affine in the prediction with weights
summing to one, so this equals mixing the raw predictions.
"""
from __future__ import annotations

import abc
from typing import Callable

import torch
from torch import nn

from rae.registry import GUIDANCE
from rae.sampling.base import VelocityFn

Predictor = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
"""A network call ``model(x_t, t, y) -> prediction`` (velocity, noise or score); y: labels or a context."""
ToVelocity = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(prediction, x_t, t) -> velocity``, e.g. ``Transport.velocity``; None means the model predicts velocity."""


class Guidance(abc.ABC):
    """Builds ``v(x, t, y)`` from a model; subclasses decide how predictions are mixed."""

    @abc.abstractmethod
    def velocity_fn(
        self,
        model: Predictor,
        *,
        to_velocity: ToVelocity | None = None,
        num_classes: int | None = None,
        null_condition: torch.Tensor | None = None,
    ) -> VelocityFn:
        """The guided velocity of ``model``; ``num_classes`` is also the null label of class dropout
        (classifier-free guidance falls back to the model's ``null_label``); ``null_condition``, a
        tensor broadcastable to y, replaces the null label for a backbone whose condition is not a
        label (MMDiT: the empty caption's context)."""


def as_velocity(model: Predictor, to_velocity: ToVelocity | None) -> VelocityFn:
    """The model's unguided velocity function; refuses a module left in training mode."""
    if isinstance(model, nn.Module) and model.training:
        raise ValueError(
            f"{type(model).__name__} is in training mode; call .eval() before sampling "
            "(training mode drops class labels at random)"
        )
    if to_velocity is None:
        return model
    return lambda x, t, y: to_velocity(model(x, t, y), x, t)


def check_interval(scale: float, t_min: float, t_max: float) -> None:
    """Shared argument checks of the interval rules."""
    if not 0.0 <= t_min <= t_max <= 1.0:
        raise ValueError(f"the guidance interval needs 0 <= t_min <= t_max <= 1, got [{t_min}, {t_max}]")
    if scale < 0:
        raise ValueError(f"the guidance scale must be >= 0, got {scale}")


def inside_interval(t: torch.Tensor, t_min: float, t_max: float) -> torch.Tensor:
    """Per-sample mask of t_min <= t <= t_max (both ends included, as the RAE and REPA samplers)."""
    return (t >= t_min) & (t <= t_max)


def any_inside(inside: torch.Tensor) -> bool:
    """Whether any sample needs guidance; always True on XLA, where asking would force a sync."""
    return inside.device.type == "xla" or bool(inside.any())


def mix(reference: torch.Tensor, guided: torch.Tensor, scale: float, inside: torch.Tensor) -> torch.Tensor:
    """reference + scale (guided - reference) where ``inside``, the guided prediction elsewhere."""
    mixed = reference + scale * (guided - reference)
    return torch.where(inside.view(-1, *([1] * (guided.dim() - 1))), mixed, guided)


@GUIDANCE.register("none")
class NoGuidance(Guidance):
    """The conditional prediction as it is."""

    def velocity_fn(
        self,
        model: Predictor,
        *,
        to_velocity: ToVelocity | None = None,
        num_classes: int | None = None,
        null_condition: torch.Tensor | None = None,
    ) -> VelocityFn:
        return as_velocity(model, to_velocity)
