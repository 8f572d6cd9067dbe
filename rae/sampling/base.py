"""The sampler interface: integrate a velocity field from noise (t = 1) to data (t = 0).

Samplers see the model only as a plain velocity function ``v(x, t, y)``; guidance
(`rae.sampling.guidance`) builds that function from one or two networks.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from rae.sampling.time_grid import resolve_shift, time_grid

VelocityFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
"""``v(x_t (B, ...), t (B,), y (B, ...) or None) -> velocity (B, ...)``, dx/dt = v; y: labels or a context."""


class PathCoefficients(Protocol):
    """What an SDE sampler needs of the interpolation x_t = alpha(t) x_data + sigma(t) noise."""

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(alpha, sigma, d alpha / dt, d sigma / dt) at ``t``."""


@dataclass(frozen=True)
class Problem:
    """What a solver integrates: the velocity, the condition, and what stochastic samplers also need."""

    velocity: VelocityFn
    y: torch.Tensor | None
    generator: torch.Generator | None = None
    path: PathCoefficients | None = None

    def at(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """The velocity at state ``x`` and one time ``t`` for the whole batch, in the dtype of ``x``."""
        t_batch = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
        return self.velocity(x, t_batch, self.y).to(x.dtype)


class Sampler(abc.ABC):
    """A solver from noise to data on a (possibly shifted) time grid of ``num_steps`` points."""

    def __init__(self, num_steps: int = 50, shift: float | str = 1.0, start: float = 1.0, end: float = 0.0) -> None:
        self.num_steps = num_steps
        self.shift = shift
        self.start = start
        self.end = end
        time_grid(num_steps, 1.0, start, end)  # check the arguments now, not at the first batch

    def grid(self, latent_shape: tuple[int, ...]) -> torch.Tensor:
        """The float64 time grid for latents of shape (C, h, w); ``shift="auto"`` uses that shape.

        ``start`` and ``end`` bound it before the shift (RAE's ODE stops at 1 - linspace's
        ``t1 = 1 - 1e-3``, so its grid ends at shift(1e-3) rather than at 0).
        """
        return time_grid(self.num_steps, resolve_shift(self.shift, latent_shape), self.start, self.end)

    def sample(
        self,
        velocity: VelocityFn,
        noise: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        path: PathCoefficients | None = None,
    ) -> torch.Tensor:
        """Integrate from ``noise`` (the state at t = ``start``, 1 by default) towards t = 0; the final state.

        ``generator`` drives the noise of stochastic samplers; ``path`` gives the
        interpolation coefficients that stochastic samplers need to turn velocity into score.
        """
        return self.solve(Problem(velocity, y, generator, path), noise, self.grid(tuple(noise.shape[1:])))

    @abc.abstractmethod
    def solve(self, problem: Problem, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """Step the state ``x`` (at ``grid[0]``) along the float64 time ``grid``; the state at its end."""

