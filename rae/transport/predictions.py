"""What the network predicts (velocity, noise, score), its training target and loss weight, and conversions.

With x_t = alpha x0 + sigma eps (``rae.transport.paths``), the three predictions are
velocity v = alpha' x0 + sigma' eps, noise eps, and score s = -eps / sigma. Conversions go through
the noise:  eps = (alpha v - alpha' x_t) / (alpha sigma' - alpha' sigma),  eps = -sigma s,
v = (alpha'/alpha) x_t + (g / sigma) eps  with g = ``Path.diffusion``. Velocity from noise or
score divides by alpha: it is undefined at pure noise (alpha = 0), which is why noise and score
models train and sample away from that end (``Transport.train_eps``).
"""
from __future__ import annotations

import torch

from rae.transport.paths import Path, expand_like

PREDICTIONS = ("velocity", "noise", "score")
LOSS_WEIGHTS = ("none", "velocity", "likelihood")


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; expected one of {', '.join(PREDICTIONS)}")
    return prediction


def target(prediction: str, path: Path, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The exact value a perfect ``prediction`` model outputs at x_t = alpha_t x0 + sigma_t noise."""
    if check_prediction(prediction) == "velocity":
        return path.velocity(x0, noise, t)
    if prediction == "noise":
        return noise
    _, sigma, _, _ = path.coefficients(expand_like(t, x0))
    return -noise / sigma


def to_noise(prediction: str, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, path: Path) -> torch.Tensor:
    """A model output of kind ``prediction`` as the noise eps it implies."""
    alpha, sigma, d_alpha, d_sigma = path.coefficients(expand_like(t, x_t))
    if check_prediction(prediction) == "velocity":
        return (alpha * out - d_alpha * x_t) / (alpha * d_sigma - d_alpha * sigma)
    if prediction == "noise":
        return out
    return -sigma * out


def from_noise(prediction: str, noise: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, path: Path) -> torch.Tensor:
    """The output of kind ``prediction`` that a noise estimate implies."""
    t = expand_like(t, x_t)
    _, sigma, _, d_sigma = path.coefficients(t)
    if check_prediction(prediction) == "velocity":
        d_log_alpha = path.d_log_alpha(t)
        return d_log_alpha * x_t + (d_sigma - d_log_alpha * sigma) * noise
    if prediction == "noise":
        return noise
    return -noise / sigma


def convert(out: torch.Tensor, source: str, dest: str, x_t: torch.Tensor, t: torch.Tensor, path: Path) -> torch.Tensor:
    """A model output of kind ``source`` as kind ``dest`` (e.g. the velocity a sampler integrates)."""
    if check_prediction(source) == check_prediction(dest):
        return out
    return from_noise(dest, to_noise(source, out, x_t, t, path), x_t, t, path)


def loss_weight(kind: str, path: Path, t: torch.Tensor) -> torch.Tensor | float:
    """SiT's weights of the noise-space error: none 1, velocity (g/sigma)^2, likelihood g/sigma^2."""
    if kind not in LOSS_WEIGHTS:
        raise ValueError(f"unknown loss weight {kind!r}; expected one of {', '.join(LOSS_WEIGHTS)}")
    if kind == "none":
        return 1.0
    _, sigma, _, _ = path.coefficients(t)
    g = path.diffusion(t)
    return (g / sigma) ** 2 if kind == "velocity" else g / sigma**2
