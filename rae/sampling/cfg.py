"""Classifier-free guidance with a guidance interval (Ho & Salimans 2022; Kynkäänniemi et al. 2024)."""
from __future__ import annotations

from typing import Callable

import torch

from rae.registry import GUIDANCE
from rae.sampling.base import VelocityFn
from rae.sampling.guidance import (
    Guidance, Predictor, ToVelocity, any_inside, as_velocity, check_interval, inside_interval, mix,
)


@GUIDANCE.register("cfg")
class ClassifierFreeGuidance(Guidance):
    """v = v_uncond + scale (v_cond - v_uncond) for t in [t_min, t_max], v_cond elsewhere.

    The conditional and unconditional halves go through the network as one batch of
    2B. The unconditional condition is ``null_condition`` when given (a tensor, e.g. the
    empty caption's context of a text-conditioned backbone), else the null class label
    ``num_classes`` (by default the backbone's ``null_label``). Steps outside the
    interval (and scale 1) run the conditional half only.
    """

    def __init__(self, scale: float = 1.0, t_min: float = 0.0, t_max: float = 1.0) -> None:
        check_interval(scale, t_min, t_max)
        self.scale = scale
        self.t_min = t_min
        self.t_max = t_max

    def velocity_fn(
        self,
        model: Predictor,
        *,
        to_velocity: ToVelocity | None = None,
        num_classes: int | None = None,
        null_condition: torch.Tensor | None = None,
    ) -> VelocityFn:
        velocity = as_velocity(model, to_velocity)
        if self.scale == 1.0:
            return velocity
        null_like = null_condition_fn(model, num_classes, null_condition)

        def guided(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
            if y is None:
                raise ValueError("classifier-free guidance needs class labels y (or a context), got None")
            inside = inside_interval(t, self.t_min, self.t_max)
            if not any_inside(inside):
                return velocity(x, t, y)
            both = velocity(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null_like(y)]))
            cond, uncond = both.chunk(2)
            return mix(uncond, cond, self.scale, inside)

        return guided


def null_condition_fn(
    model: Predictor, num_classes: int | None, null_condition: torch.Tensor | None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """y -> its unconditional counterpart: ``null_condition`` broadcast to y's shape, else null labels."""
    if null_condition is not None:

        def broadcast(y: torch.Tensor) -> torch.Tensor:
            try:
                return null_condition.to(device=y.device, dtype=y.dtype).expand_as(y)
            except RuntimeError:
                raise ValueError(f"the null condition {tuple(null_condition.shape)} does not broadcast to the "
                                 f"condition y {tuple(y.shape)}") from None

        return broadcast
    null_label = num_classes if num_classes is not None else getattr(model, "null_label", None)
    if null_label is None:
        raise ValueError(
            "classifier-free guidance needs the null label: pass num_classes, or a backbone with `null_label`; "
            "or, for a condition that is not a label, its null_condition"
        )
    return lambda y: torch.full_like(y, null_label)
