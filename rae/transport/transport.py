"""The transport: path + prediction + time schedule + time shift; the stage-2 loss and the sampler's velocity.

Training (one call, or two for REPA, which also needs the backbone's tokens):
    point = transport.draw(x0, generator)                    # t, noise, x_t
    out = model(point.x_t, point.t, y)                       # or (out, tokens) with return_tokens_at
    loss = transport.loss(out, point)                        # (B,) per-sample loss
Sampling: ``transport.velocity(out, x_t, t)`` turns any prediction into dx/dt, and
Samplers build their shifted grid with ``rae.sampling.time_grid`` and ``transport.shift``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from rae.registry import LOSSES
from rae.transport.paths import LinearPath, Path, VPPath
from rae.transport.predictions import LOSS_WEIGHTS, check_prediction, convert, loss_weight, to_noise
from rae.transport.schedules import TimeSchedule, Uniform
from rae.transport.shift import dimension_shift, shift_time


@dataclass
class TrainingPoint:
    """One training draw: data x0, noise, times t (B,), and x_t = alpha_t x0 + sigma_t noise."""

    x0: torch.Tensor
    noise: torch.Tensor
    t: torch.Tensor
    x_t: torch.Tensor


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch."""
    return x.mean(dim=tuple(range(1, x.ndim)))


@LOSSES.register("transport")
class Transport:
    """Flow-matching transport with t = 1 noise, t = 0 data.

    Args:
      path: interpolation (``LinearPath`` when None).
      prediction: what the network outputs: "velocity", "noise" or "score".
      time_schedule: distribution of training times (``Uniform`` when None).
      loss_weight: "none", or for noise/score predictions SiT's "velocity" / "likelihood".
      shift_base_dim: if set, time shift s = sqrt(latent_dim / shift_base_dim) (RAE: 4096).
      time_shift: a fixed shift s instead (at most one of the two; neither means s = 1).
      train_eps: distance kept from an end where the target diverges; the default follows SiT
        (VP: 1e-5 from data; noise/score on linear or GVP: 1e-3 from both ends; else 0).
      truncate_at: the schedule's draw is conditioned on t <= truncate_at, before the shift. RAE's
        transport.py (``check_interval``) trains velocity models on [0, 1 - 1/1000]: uniform t as
        U[0, 0.999), logit-normal truncated there; REPA's loss.py has no bound (1, the default).
    Training times are the schedule's draw (truncated), shifted, then mapped linearly onto [t_min, t_max].
    """

    def __init__(
        self,
        path: Path | None = None,
        prediction: str = "velocity",
        time_schedule: TimeSchedule | None = None,
        loss_weight: str = "none",
        shift_base_dim: int | None = None,
        time_shift: float | None = None,
        train_eps: float | None = None,
        truncate_at: float = 1.0,
    ) -> None:
        self.path = path if path is not None else LinearPath()
        self.prediction = check_prediction(prediction)
        self.time_schedule = time_schedule if time_schedule is not None else Uniform()
        if loss_weight not in LOSS_WEIGHTS:
            raise ValueError(f"unknown loss_weight {loss_weight!r}; expected one of {', '.join(LOSS_WEIGHTS)}")
        if prediction == "velocity" and loss_weight != "none":
            raise ValueError(f"loss_weight {loss_weight!r} weighs noise/score errors; velocity prediction takes 'none'")
        if shift_base_dim is not None and time_shift is not None:
            raise ValueError("give shift_base_dim (dimension-dependent shift) or time_shift (fixed), not both")
        if time_shift is not None and time_shift <= 0:
            raise ValueError(f"time_shift must be positive, got {time_shift}")
        if not 0.0 < truncate_at <= 1.0:
            raise ValueError(f"transport.truncate_at must be in (0, 1], got {truncate_at}")
        self.loss_weight = loss_weight
        self.truncate_at = truncate_at
        self.shift_base_dim = shift_base_dim
        self.time_shift = time_shift
        self.t_min, self.t_max = self._train_interval(train_eps)

    def _train_interval(self, eps: float | None) -> tuple[float, float]:
        if isinstance(self.path, VPPath):  # sigma = 0 at the data end only
            return (1e-5 if eps is None else eps), 1.0
        if eps is None:
            eps = 0.0 if self.prediction == "velocity" else 1e-3
        return eps, 1.0 - eps

    # ---- time ----

    def shift(self, latent_shape: Sequence[int]) -> float:
        """The time shift s for latents of shape (C, H, W) (batch dimension excluded)."""
        if self.time_shift is not None:
            return self.time_shift
        if self.shift_base_dim is not None:
            return dimension_shift(math.prod(latent_shape), self.shift_base_dim)
        return 1.0

    def sample_time(self, n: int, latent_shape: Sequence[int], generator: torch.Generator | None = None,
                    device: torch.device | str | None = None) -> torch.Tensor:
        """n training times: schedule draw (conditioned on t <= truncate_at) -> shift -> [t_min, t_max]."""
        u = self.time_schedule.sample_below(n, self.truncate_at, generator=generator, device=device)
        return self.t_min + (self.t_max - self.t_min) * shift_time(u, self.shift(latent_shape))

    # ---- training ----

    def point(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> TrainingPoint:
        """The training point for given data, noise and times."""
        return TrainingPoint(x0, noise, t, self.path.interpolate(x0, noise, t).to(x0.dtype))

    def draw(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> TrainingPoint:
        """Draw t and noise for a batch x0 (B, ...); use a generator on x0's device to avoid copies."""
        t = self.sample_time(x0.shape[0], x0.shape[1:], generator=generator, device=x0.device)
        device = generator.device if generator is not None else x0.device
        noise = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype)
        return self.point(x0, noise.to(x0.device), t.to(x0.device))

    def loss(self, model_out: torch.Tensor, point: TrainingPoint) -> torch.Tensor:
        """(B,) per-sample loss in float32: velocity MSE, or the weighted MSE of the implied noise (SiT)."""
        if model_out.shape != point.x0.shape:
            raise ValueError(f"model output {tuple(model_out.shape)} does not match x0 {tuple(point.x0.shape)}")
        out, x0, noise, x_t = (v.float() for v in (model_out, point.x0, point.noise, point.x_t))
        t = point.t.float()
        if self.prediction == "velocity":
            return mean_flat((out - self.path.velocity(x0, noise, t)) ** 2)
        error = to_noise(self.prediction, out, x_t, t, self.path) - noise
        return loss_weight(self.loss_weight, self.path, t) * mean_flat(error**2)

    def training_loss(
        self,
        model: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        x0: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """(B,) per-sample loss of ``model(x_t, t, y)`` at freshly drawn t and noise."""
        point = self.draw(x0, generator)
        return self.loss(model(point.x_t, point.t, y), point)

    # ---- sampling ----

    def velocity(self, model_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """dx_t/dt implied by the model's output, whatever it predicts."""
        return convert(model_out, self.prediction, "velocity", x_t, t, self.path)
