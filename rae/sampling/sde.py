"""Stochastic sampling: Euler-Maruyama on the reverse-time SDE that shares the ODE's marginals.

With x_t = alpha(t) x_data + sigma(t) noise, score s = grad log p_t and any diffusion
w(t) >= 0, the SDE  dx = [v - w s] dt + sqrt(2 w) dW  run from t = 1 down to t = 0
has the same marginals as dx/dt = v (SiT, Sec. 2.3). A step of size h = t - t_next is
    x <- x - h (v - w s) + sqrt(2 w h) z,   z ~ N(0, I).
SiT and REPA write the same rule with their own t directions: SiT runs t from noise = 0
to data = 1 (drift v + w s, step +h); REPA runs t from 1 to 0 with diffusion 2w = 2t on
both of its paths (``samplers.py`` ``compute_diffusion``), i.e. ``diffusion_form="linear"``.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from rae.registry import SAMPLERS
from rae.sampling.base import PathCoefficients, Problem, Sampler
from rae.sampling.time_grid import resolve_shift, time_grid

Coefficients = tuple[float, float, float, float]

# w(t) for each diffusion form, from (t, (alpha, sigma, d_alpha, d_sigma), norm); SiT's
# forms rewritten for t = 1 at noise (SiT's t is 1 - ours).
DIFFUSION_FORMS: dict[str, Callable[[float, Coefficients, float], float]] = {
    "constant": lambda t, c, norm: norm,
    # SiT's "SBDM": the diffusion of the variance-preserving SDE; infinite where alpha = 0.
    "sbdm": lambda t, c, norm: norm * (c[1] * c[3] - c[2] / c[0] * c[1] ** 2) if c[0] else math.inf,
    # w = sigma(t): equal to REPA's w = t on the linear path only.
    "sigma": lambda t, c, norm: norm * c[1],
    # REPA's compute_diffusion with norm 1, on any path: w = t, i.e. 2w = 2t.
    "linear": lambda t, c, norm: norm * t,
    "decreasing": lambda t, c, norm: 0.25 * (1 - norm * math.cos(math.pi * t)) ** 2,
    "increasing_decreasing": lambda t, c, norm: norm * math.sin(math.pi * t) ** 2,
}
LAST_STEPS = ("none", "mean", "euler", "tweedie")


def score_from_velocity(v: torch.Tensor, x: torch.Tensor, c: Coefficients) -> torch.Tensor:
    """grad log p_t(x) from the velocity: noise = (alpha v - alpha' x) / (alpha sigma' - alpha' sigma), s = -noise / sigma."""
    alpha, sigma, d_alpha, d_sigma = c
    noise = (alpha * v - d_alpha * x) / (alpha * d_sigma - d_alpha * sigma)
    return -noise / sigma


@SAMPLERS.register("sde")
class SDESampler(Sampler):
    """Euler-Maruyama from t = ``start`` over ``num_steps`` grid points, then one last step to t = 0.

    The grid, shifted like the ODE's, ends exactly at ``last_step_size``; the last step from
    there to data is ``none`` (keep x), ``mean`` (the SDE drift, no noise), ``euler``
    (the ODE drift) or ``tweedie`` (E[x_data | x] = (x + sigma^2 s) / alpha). With
    ``last_step="none"`` the grid runs to t = 0 itself. REPA's SDE sampler is
    ``num_steps=250, diffusion_form="linear", last_step="mean", last_step_size=0.04`` on its
    linear and cosine paths alike.
    """

    def __init__(
        self,
        num_steps: int = 250,
        shift: float | str = 1.0,
        diffusion_form: str = "sigma",
        diffusion_norm: float = 1.0,
        last_step: str = "mean",
        last_step_size: float = 0.04,
        start: float = 1.0,
    ) -> None:
        super().__init__(num_steps, shift, start, end=0.0 if last_step == "none" else last_step_size)
        if diffusion_form not in DIFFUSION_FORMS:
            raise ValueError(f"unknown diffusion_form {diffusion_form!r}; expected one of {sorted(DIFFUSION_FORMS)}")
        if last_step not in LAST_STEPS:
            raise ValueError(f"unknown last_step {last_step!r}; expected one of {list(LAST_STEPS)}")
        self.diffusion_form = diffusion_form
        self.diffusion_norm = diffusion_norm
        self.last_step = last_step
        self.last_step_size = last_step_size

    def grid(self, latent_shape: tuple[int, ...]) -> torch.Tensor:
        """The shifted grid from ``start`` to exactly ``last_step_size`` (0 without a last step).

        The reference shifts the grid's end as well, so its "last step" of nominal size 0.04
        starts from shift(0.04) (0.11 at s = 3) and stops short of t = 0; here the unshifted
        end is chosen so that the shifted grid ends at ``last_step_size`` itself.
        """
        shift = resolve_shift(self.shift, latent_shape)
        h = self.end  # last_step_size, or 0 without a last step
        return time_grid(self.num_steps, shift, self.start, end=h / (shift - (shift - 1) * h))

    def solve(self, problem: Problem, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        if problem.path is None:
            raise ValueError("the SDE sampler needs the transport's path (its alpha, sigma) to turn velocity into score")
        times = grid.tolist()
        for t_cur, t_next in zip(times[:-1], times[1:]):
            h = t_cur - t_next
            v, s, w = self._drift_terms(problem, x, t_cur)
            z = _gaussian(x, problem.generator)
            x = x - h * (v - w * s) + math.sqrt(2 * w * h) * z
        return self._last(problem, x, times[-1])

    def _drift_terms(self, problem: Problem, x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Velocity, score and diffusion w at one time."""
        c = _coefficients(problem.path, t)
        w = DIFFUSION_FORMS[self.diffusion_form](t, c, self.diffusion_norm)
        if not math.isfinite(w) or w < 0:
            raise ValueError(
                f"diffusion_form {self.diffusion_form!r} gives w({t:.4g}) = {w}; use a start < 1 "
                "(SiT starts at 1 - eps) or another diffusion_form"
            )
        v = problem.at(x, t)
        return v, score_from_velocity(v, x, c), w

    def _last(self, problem: Problem, x: torch.Tensor, t: float) -> torch.Tensor:
        """The final step from the grid's last time ``t`` to data."""
        if self.last_step == "none":
            return x
        if self.last_step == "euler":
            return x - t * problem.at(x, t)
        v, s, w = self._drift_terms(problem, x, t)
        if self.last_step == "mean":
            return x - t * (v - w * s)
        alpha, sigma, _, _ = _coefficients(problem.path, t)
        return (x + sigma**2 * s) / alpha


def _gaussian(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like ``like``, drawn on the generator's device (a CPU generator works too)."""
    device = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=device).to(like.device)


def _coefficients(path: PathCoefficients, t: float) -> Coefficients:
    """The path's (alpha, sigma, alpha', sigma') at a scalar time, as Python floats."""
    values = path.coefficients(torch.tensor(t, dtype=torch.float64))
    return tuple(float(v) for v in values)  # type: ignore[return-value]
