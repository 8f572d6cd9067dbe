"""A guidance plugin: the rule that builds the sampler's velocity v(x, t, y) from the backbone.

Subclass `rae.sampling.guidance.Guidance` and implement ``velocity_fn(model, *, to_velocity,
num_classes, null_condition)``: it returns the function the sampler integrates. ``as_velocity``
turns the model's prediction into velocity (``to_velocity``, the transport's conversion) and refuses a
model left in training mode; `rae.sampling.cfg.null_condition_fn` gives the unconditional ``y``. A rule
that holds a network (autoguidance's guide) is also an ``nn.Module``, so it moves to the device and
loads its weights with the other models.

    python tools/run.py --import examples/plugins/my_guidance.py --gin examples/plugins/my_guidance.gin
"""
from __future__ import annotations

import torch

from rae.registry import GUIDANCE
from rae.sampling.base import VelocityFn
from rae.sampling.cfg import null_condition_fn
from rae.sampling.guidance import Guidance, Predictor, ToVelocity, as_velocity


@GUIDANCE.register("ramp_cfg")
class RampCFG(Guidance):
    """Classifier-free guidance whose scale rises linearly from 1 at t = 1 (noise) to ``scale`` at t = 0."""

    def __init__(self, scale: float = 2.0) -> None:
        if scale < 0:
            raise ValueError(f"ramp_cfg.scale must be >= 0, got {scale}")
        self.scale = scale

    def velocity_fn(self, model: Predictor, *, to_velocity: ToVelocity | None = None, num_classes: int | None = None,
                    null_condition: torch.Tensor | None = None) -> VelocityFn:
        velocity = as_velocity(model, to_velocity)
        null_like = null_condition_fn(model, num_classes, null_condition)

        def guided(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
            if y is None:
                raise ValueError("ramp_cfg needs class labels y, got None")
            both = velocity(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null_like(y)]))
            cond, uncond = both.chunk(2)
            scale = (1 + (self.scale - 1) * (1 - t)).view(-1, *[1] * (x.dim() - 1))
            return uncond + scale * (cond - uncond)

        return guided
