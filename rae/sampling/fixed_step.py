"""Native fixed-step ODE solvers (Euler, Heun) that need no torchdiffeq.

Plain tensor arithmetic on a precomputed grid, no data-dependent control flow, so they
also run on XLA devices, where torchdiffeq does not.
"""
from __future__ import annotations

import torch

from rae.registry import SAMPLERS
from rae.sampling.base import Problem, Sampler


@SAMPLERS.register("euler")
class EulerSampler(Sampler):
    """Explicit Euler: x <- x + (t_next - t) v(x, t); num_steps - 1 model evaluations."""

    def solve(self, problem: Problem, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        times = grid.tolist()
        for t_cur, t_next in zip(times[:-1], times[1:]):
            x = x + (t_next - t_cur) * problem.at(x, t_cur)
        return x


@SAMPLERS.register("heun")
class HeunSampler(Sampler):
    """Heun's second-order method (explicit trapezoid, torchdiffeq's ``heun2``): 2 evaluations a step.

    ``euler_last_step``: the last step is a plain Euler step (no corrector), as REPA's
    ``samplers.py`` ``euler_sampler(heun=True)`` does (``if heun and (i < num_steps - 1)``); its
    N steps cost 2N - 1 evaluations. Off, every step is Heun's (2N evaluations).
    """

    def __init__(self, num_steps: int = 50, shift: float | str = 1.0, start: float = 1.0, end: float = 0.0,
                 euler_last_step: bool = False) -> None:
        super().__init__(num_steps, shift, start, end)
        self.euler_last_step = euler_last_step

    def solve(self, problem: Problem, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        times = grid.tolist()
        last = len(times) - 2
        for i, (t_cur, t_next) in enumerate(zip(times[:-1], times[1:])):
            h = t_next - t_cur
            v_cur = problem.at(x, t_cur)
            if i == last and self.euler_last_step:
                x = x + h * v_cur
                continue
            v_next = problem.at(x + h * v_cur, t_next)
            x = x + 0.5 * h * (v_cur + v_next)
        return x
