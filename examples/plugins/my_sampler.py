"""A sampler plugin: a solver that integrates a velocity field from noise (t = 1) to data (t = 0).

Subclass `rae.sampling.base.Sampler` and implement ``sample(velocity, noise, y, *, generator, path)``.
The base class holds ``num_steps``, ``shift``, ``start`` and ``end`` and gives ``grid(latent_shape)``,
the (shifted) time grid; ``evaluate`` calls the velocity for the whole batch at one time. The model is
seen only as the velocity function that the guidance rule built, so a sampler works with any backbone.

    python tools/run.py --import examples/plugins/my_sampler.py --gin examples/plugins/my_sampler.gin
"""
from __future__ import annotations

import torch

from rae.registry import SAMPLERS
from rae.sampling.base import PathCoefficients, Sampler, VelocityFn, evaluate


@SAMPLERS.register("midpoint")
class MidpointSampler(Sampler):
    """The explicit midpoint rule (second order): x <- x + dt v(x + dt/2 v(x, t), t + dt/2); 2 evaluations a step."""

    def sample(self, velocity: VelocityFn, noise: torch.Tensor, y: torch.Tensor | None = None, *,
               generator: torch.Generator | None = None, path: PathCoefficients | None = None) -> torch.Tensor:
        x = noise
        grid = self.grid(tuple(noise.shape[1:])).tolist()
        for t, t_next in zip(grid[:-1], grid[1:]):
            dt = t_next - t
            half = x + 0.5 * dt * evaluate(velocity, x, t, y)
            x = x + dt * evaluate(velocity, half, t + 0.5 * dt, y)
        return x
