"""Interpolation paths between data and noise: x_t = alpha_t x0 + sigma_t eps, t = 0 data, t = 1 noise.

Formulas follow SiT's ``transport/path.py`` with its time reversed (SiT has t = 1 at the data):
linear alpha = 1 - t, sigma = t; GVP alpha = cos(pi t / 2), sigma = sin(pi t / 2) (REPA's
"cosine" path); VP the variance-preserving SDE path with a linear beta schedule.
Derivatives (d_alpha, d_sigma) are with respect to t, so the velocity dx_t/dt points towards noise.
"""
from __future__ import annotations

import abc
import math

import torch

from rae.registry import PATHS


def expand_like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) or scalar t -> a shape that broadcasts over x (B, ...)."""
    t = torch.as_tensor(t, device=x.device)
    return t.reshape(-1, *([1] * (x.ndim - 1))) if t.ndim else t


class Path(abc.ABC):
    """alpha_t, sigma_t and their t-derivatives; everything else (targets, conversions) derives from them."""

    @abc.abstractmethod
    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(alpha_t, sigma_t, d alpha_t / dt, d sigma_t / dt), each shaped like t."""

    def d_log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """d log(alpha_t) / dt; paths override it where alpha_t underflows."""
        alpha, _, d_alpha, _ = self.coefficients(t)
        return d_alpha / alpha

    def interpolate(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = alpha_t x0 + sigma_t eps."""
        alpha, sigma, _, _ = self.coefficients(expand_like(t, x0))
        return alpha * x0 + sigma * noise

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The velocity target dx_t/dt = alpha'_t x0 + sigma'_t eps."""
        _, _, d_alpha, d_sigma = self.coefficients(expand_like(t, x0))
        return d_alpha * x0 + d_sigma * noise

    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        """g_t = sigma_t sigma'_t - (alpha'_t / alpha_t) sigma_t^2, SiT's ``drift_var``: v = (alpha'/alpha) x - g score."""
        _, sigma, _, d_sigma = self.coefficients(t)
        return sigma * d_sigma - self.d_log_alpha(t) * sigma**2


@PATHS.register("linear")
class LinearPath(Path):
    """alpha = 1 - t, sigma = t (rectified flow; RAE and REPA's default)."""

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return 1 - t, t, -torch.ones_like(t), torch.ones_like(t)


@PATHS.register("gvp")
class GVPPath(Path):
    """alpha = cos(pi t / 2), sigma = sin(pi t / 2): alpha^2 + sigma^2 = 1 (SiT's GVP, REPA's cosine)."""

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        angle = t * math.pi / 2
        return torch.cos(angle), torch.sin(angle), -math.pi / 2 * torch.sin(angle), math.pi / 2 * torch.cos(angle)

    def d_log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return -math.pi / 2 * torch.tan(t * math.pi / 2)


@PATHS.register("vp")
class VPPath(Path):
    """alpha = exp(-t^2 (b1 - b0) / 4 - t b0 / 2), sigma = sqrt(1 - alpha^2): the VP SDE, beta_t = b0 + t (b1 - b0)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        if not 0 <= beta_min < beta_max:
            raise ValueError(f"vp path needs 0 <= beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min = beta_min
        self.beta_max = beta_max

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def d_log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return -0.5 * (self.beta_min + t * (self.beta_max - self.beta_min))

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        log_alpha = self.log_alpha(t)
        alpha = torch.exp(log_alpha)
        sigma = torch.sqrt(-torch.expm1(2 * log_alpha))
        d_log_alpha = self.d_log_alpha(t)
        return alpha, sigma, alpha * d_log_alpha, -(alpha**2) * d_log_alpha / sigma
