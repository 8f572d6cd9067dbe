"""A guidance plugin: the rule that builds the sampler's velocity v(x, t, y) from the backbone.

Subclass `rae.sampling.guidance.Guidance` and implement ``guided_velocity(inputs)``: it returns the
function the sampler integrates (the base class's ``velocity_fn(model, *, to_velocity, num_classes,
null_condition)`` gathers ``inputs``). ``inputs.velocity()`` is the model's prediction turned into
velocity by the transport's conversion, refusing a model left in training mode; ``inputs.null_like()``
gives the unconditional ``y``. A rule that mixes a reference into the conditional velocity only on a
time interval subclasses `IntervalGuidance` instead and implements ``pairs``. A rule that holds a
network (autoguidance's guide) is also an ``nn.Module``, so it moves to the device and loads its
weights with the other models.

    python tools/run.py --import examples/plugins/my_guidance.py --gin examples/plugins/my_guidance.gin
"""
from __future__ import annotations

import torch

from rae.registry import GUIDANCE
from rae.sampling.base import VelocityFn
from rae.sampling.guidance import Guidance, GuidanceInputs


@GUIDANCE.register("ramp_cfg")
class RampCFG(Guidance):
    """Classifier-free guidance whose scale rises linearly from 1 at t = 1 (noise) to ``scale`` at t = 0."""

    def __init__(self, scale: float = 2.0) -> None:
        if scale < 0:
            raise ValueError(f"ramp_cfg.scale must be >= 0, got {scale}")
        self.scale = scale

    def guided_velocity(self, inputs: GuidanceInputs) -> VelocityFn:
        velocity, null_like = inputs.velocity(), inputs.null_like()

        def guided(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
            if y is None:
                raise ValueError("ramp_cfg needs class labels y, got None")
            both = velocity(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null_like(y)]))
            cond, uncond = both.chunk(2)
            scale = (1 + (self.scale - 1) * (1 - t)).view(-1, *[1] * (x.dim() - 1))
            return uncond + scale * (cond - uncond)

        return guided
