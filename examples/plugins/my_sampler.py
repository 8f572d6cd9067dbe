"""A sampler plugin: a solver that integrates a velocity field from noise (t = 1) to data (t = 0).

Subclass `rae.sampling.base.Sampler` and implement ``solve(problem, x, grid)``: step the noise ``x``
along the float64 time ``grid`` from t = 1 towards 0. The base class holds ``num_steps``, ``shift``,
``start`` and ``end``, makes the (shifted) grid for the latent shape and gives the public
``sample(velocity, noise, y, *, generator, path)``; ``problem.at(x, t)`` calls the velocity for the
whole batch at one time (``problem`` also carries the ``generator`` and ``path`` that stochastic
samplers need). The model is seen only as the velocity function that the guidance rule built, so a
sampler works with any backbone.

    python tools/run.py --import examples/plugins/my_sampler.py --gin examples/plugins/my_sampler.gin
"""
from __future__ import annotations

import torch

from rae.registry import SAMPLERS
from rae.sampling.base import Problem, Sampler


@SAMPLERS.register("midpoint")
class MidpointSampler(Sampler):
    """The explicit midpoint rule (second order): x <- x + dt v(x + dt/2 v(x, t), t + dt/2); 2 evaluations a step."""

    def solve(self, problem: Problem, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        times = grid.tolist()
        for t, t_next in zip(times[:-1], times[1:]):
            dt = t_next - t
            half = x + 0.5 * dt * problem.at(x, t)
            x = x + dt * problem.at(half, t + 0.5 * dt)
        return x
