"""Classifier-free guidance with a guidance interval (Ho & Salimans 2022; Kynkäänniemi et al. 2024)."""
from __future__ import annotations

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
    2B; the unconditional label is the null class ``num_classes`` (by default the
    backbone's ``null_label``). Steps outside the
    interval (and scale 1) run the conditional half only.
    """

    def __init__(self, scale: float = 1.0, t_min: float = 0.0, t_max: float = 1.0) -> None:
        check_interval(scale, t_min, t_max)
        self.scale = scale
        self.t_min = t_min
        self.t_max = t_max

    def velocity_fn(
        self, model: Predictor, *, to_velocity: ToVelocity | None = None, num_classes: int | None = None
    ) -> VelocityFn:
        velocity = as_velocity(model, to_velocity)
        if self.scale == 1.0:
            return velocity
        null_label = num_classes if num_classes is not None else getattr(model, "null_label", None)
        if null_label is None:
            raise ValueError(
                "classifier-free guidance needs the null label: pass num_classes, or a backbone with `null_label`"
            )

        def guided(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
            if y is None:
                raise ValueError("classifier-free guidance needs class labels y, got None")
            inside = inside_interval(t, self.t_min, self.t_max)
            if not any_inside(inside):
                return velocity(x, t, y)
            null = torch.full_like(y, null_label)
            both = velocity(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
            cond, uncond = both.chunk(2)
            return mix(uncond, cond, self.scale, inside)

        return guided
