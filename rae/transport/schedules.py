"""How training draws t in [0, 1]: uniform, logit-normal (SD3; RAE's stage 2 with mean 0, std 1), or
REPA's log-normal on the cosine path. Each gives its CDF and inverse, so that a draw can be conditioned
on t <= high (`TimeSchedule.sample_below`: RAE's training interval [0, 1 - 1/1000])."""
from __future__ import annotations

import abc
import math

import torch

from rae.registry import TIME_SCHEDULES


def _device(generator: torch.Generator | None, device: torch.device | str | None) -> torch.device | str | None:
    """Draw on the generator's device when one is given (torch requires it)."""
    return generator.device if generator is not None else device


class TimeSchedule(abc.ABC):
    """A distribution of training times on [0, 1]."""

    @abc.abstractmethod
    def sample(self, n: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> torch.Tensor:
        """n float32 times; drawn on the generator's device if a generator is given."""

    @abc.abstractmethod
    def cdf(self, t: torch.Tensor) -> torch.Tensor:
        """P(T <= t)."""

    @abc.abstractmethod
    def icdf(self, u: torch.Tensor) -> torch.Tensor:
        """The time with P(T <= t) = u (the inverse of `cdf`)."""

    def sample_below(self, n: int, high: float, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None) -> torch.Tensor:
        """n times conditioned on T <= ``high``, by inverse CDF; ``high >= 1`` is `sample` itself.

        RAE's ``transport.py`` draws training times this way on [0, 1 - 1/1000]: uniform as
        ``rand * high``, logit-normal by ``truncated_logitnormal_sample`` (u ~ U(0, cdf(high)),
        t = icdf(u), clamped into [0, high]).
        """
        if high >= 1.0:
            return self.sample(n, generator=generator, device=device)
        u = torch.rand(n, generator=generator, device=_device(generator, device))
        return self.icdf(u * self.cdf(torch.tensor(high))).clamp(0.0, high)


@TIME_SCHEDULES.register("uniform")
class Uniform(TimeSchedule):
    """t ~ U[0, 1]."""

    def sample(self, n: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> torch.Tensor:
        return torch.rand(n, generator=generator, device=_device(generator, device))

    def cdf(self, t: torch.Tensor) -> torch.Tensor:
        return t.clamp(0.0, 1.0)

    def icdf(self, u: torch.Tensor) -> torch.Tensor:
        return u


class WarpedNormal(TimeSchedule):
    """t = warp(mean + std z), z ~ N(0, 1), for an increasing ``warp`` onto [0, 1]; CDF Phi((unwarp(t) - mean) / std).

    ``name`` is the registered name, for the messages of the checks.
    """

    name: str

    def __init__(self, mean: float = 0.0, std: float = 1.0) -> None:
        if std <= 0:
            raise ValueError(f"{self.name} std must be positive, got {std}")
        self.mean = mean
        self.std = std

    @staticmethod
    @abc.abstractmethod
    def warp(x: torch.Tensor) -> torch.Tensor:
        """The real line onto [0, 1], increasing."""

    @staticmethod
    @abc.abstractmethod
    def unwarp(t: torch.Tensor) -> torch.Tensor:
        """The inverse of `warp`."""

    def sample(self, n: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> torch.Tensor:
        z = torch.randn(n, generator=generator, device=_device(generator, device))
        return self.warp(self.mean + self.std * z)

    def cdf(self, t: torch.Tensor) -> torch.Tensor:
        return torch.special.ndtr((self.unwarp(t) - self.mean) / self.std)

    def icdf(self, u: torch.Tensor) -> torch.Tensor:
        return self.warp(self.mean + self.std * torch.special.ndtri(u))


@TIME_SCHEDULES.register("logit_normal")
class LogitNormal(WarpedNormal):
    """t = sigmoid(z), z ~ N(mean, std^2); CDF P(t <= u) = Phi((logit(u) - mean) / std).

    With the linear path this equals REPA's "lognormal" weighting (sigma_t / alpha_t log-normal).
    """

    name = "logit_normal"
    warp = staticmethod(torch.sigmoid)
    unwarp = staticmethod(torch.logit)


@TIME_SCHEDULES.register("arctan_log_normal")
class ArctanLogNormal(WarpedNormal):
    """t = (2 / pi) atan(exp(mean + std z)), z ~ N(0, 1); CDF P(t <= u) = Phi((log tan(pi u / 2) - mean) / std).

    REPA's "lognormal" weighting on its cosine (GVP) path: there sigma_t / alpha_t = tan(pi t / 2) is
    log-normal, as t / (1 - t) is under ``logit_normal`` on the linear path.
    """

    name = "arctan_log_normal"

    @staticmethod
    def warp(x: torch.Tensor) -> torch.Tensor:
        return torch.atan(torch.exp(x)) * (2 / math.pi)

    @staticmethod
    def unwarp(t: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.tan(math.pi / 2 * t))
