"""The guidance interface: turn network calls into the velocity function a sampler integrates.

A guidance rule mixes a guided prediction with a reference one, v = v_ref + scale (v - v_ref),
only where t_min <= t <= t_max (elsewhere the plain conditional prediction). Mixing is done
on velocities: conversion from any prediction is affine in the prediction with weights
summing to one, so this equals mixing the raw predictions.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from rae.registry import GUIDANCE
from rae.sampling.base import VelocityFn

Predictor = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
"""A network call ``model(x_t, t, y) -> prediction`` (velocity, noise or score); y: labels or a context."""
ToVelocity = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(prediction, x_t, t) -> velocity``, e.g. ``Transport.velocity``; None means the model predicts velocity."""
PairFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], tuple[torch.Tensor, torch.Tensor]]
"""``(x_t, t, y) -> (reference velocity, conditional velocity)``, what an interval rule mixes."""


@dataclass(frozen=True)
class GuidanceInputs:
    """The model a rule guides, the conversion of its prediction to velocity and what makes the null condition."""

    model: Predictor
    to_velocity: ToVelocity | None = None
    num_classes: int | None = None
    null_condition: torch.Tensor | None = None

    def velocity(self, network: Predictor | None = None) -> VelocityFn:
        """The unguided velocity of the model, or of another ``network`` (a guide) with the same conversion."""
        return as_velocity(self.model if network is None else network, self.to_velocity)

    def null_like(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """y -> its unconditional counterpart: ``null_condition`` broadcast to y's shape, else null labels."""
        null_condition = self.null_condition
        if null_condition is not None:

            def broadcast(y: torch.Tensor) -> torch.Tensor:
                try:
                    return null_condition.to(device=y.device, dtype=y.dtype).expand_as(y)
                except RuntimeError:
                    raise ValueError(f"the null condition {tuple(null_condition.shape)} does not broadcast to the "
                                     f"condition y {tuple(y.shape)}") from None

            return broadcast
        null_label = self.num_classes if self.num_classes is not None else getattr(self.model, "null_label", None)
        if null_label is None:
            raise ValueError(
                "classifier-free guidance needs the null label: pass num_classes, or a backbone with `null_label`; "
                "or, for a condition that is not a label, its null_condition"
            )
        return lambda y: torch.full_like(y, null_label)


class Guidance(abc.ABC):
    """Builds ``v(x, t, y)`` from a model; subclasses decide how predictions are mixed."""

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
        return self.guided_velocity(GuidanceInputs(model, to_velocity, num_classes, null_condition))

    @abc.abstractmethod
    def guided_velocity(self, inputs: GuidanceInputs) -> VelocityFn:
        """The velocity function a sampler integrates, built from ``inputs``."""


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

    def guided_velocity(self, inputs: GuidanceInputs) -> VelocityFn:
        return inputs.velocity()


class IntervalGuidance(Guidance):
    """v = v_ref + scale (v - v_ref) for t in [t_min, t_max], the conditional velocity elsewhere; scale 1 is v.

    Subclasses say where the reference comes from (``pairs``); a scale of 1 never builds it.
    """

    def __init__(self, scale: float = 1.0, t_min: float = 0.0, t_max: float = 1.0) -> None:
        if not 0.0 <= t_min <= t_max <= 1.0:
            raise ValueError(f"the guidance interval needs 0 <= t_min <= t_max <= 1, got [{t_min}, {t_max}]")
        if scale < 0:
            raise ValueError(f"the guidance scale must be >= 0, got {scale}")
        self.scale = scale
        self.t_min = t_min
        self.t_max = t_max

    def guided_velocity(self, inputs: GuidanceInputs) -> VelocityFn:
        velocity = inputs.velocity()
        if self.scale == 1.0:
            return velocity
        pairs = self.pairs(velocity, inputs)

        def guided(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
            self.check_condition(y)
            inside = inside_interval(t, self.t_min, self.t_max)
            if not any_inside(inside):
                return velocity(x, t, y)
            reference, conditional = pairs(x, t, y)
            return mix(reference, conditional, self.scale, inside)

        return guided

    def check_condition(self, y: torch.Tensor | None) -> None:
        """Refuse, at every step, a condition the rule cannot guide; any condition by default."""

    @abc.abstractmethod
    def pairs(self, velocity: VelocityFn, inputs: GuidanceInputs) -> PairFn:
        """``(x, t, y) -> (reference velocity, conditional velocity)`` for the steps inside the interval."""
