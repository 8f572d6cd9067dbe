"""Fréchet distance between Gaussians fitted to features: FID (pool3) and sFID (spatial)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


@dataclass
class GaussianStats:
    """Mean and covariance of a feature set, float64, as ADM's reference ``.npz`` stores them."""

    mu: np.ndarray
    sigma: np.ndarray

    @classmethod
    def of(cls, features: ArrayLike) -> "GaussianStats":
        """Sample mean and unbiased covariance (numpy's ``cov``, as ADM's evaluator) of (N, D) features."""
        f = _float64(features)
        if f.ndim != 2 or f.shape[0] < 2:
            raise ValueError(f"need (N >= 2, D) features to fit a Gaussian, got shape {tuple(f.shape)}")
        return cls(mu=f.mean(0).numpy(), sigma=torch.cov(f.T).numpy())


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2)).

    The trace term is computed as the sum of sqrt-eigenvalues of S_a^(1/2) S_b S_a^(1/2),
    a symmetric PSD matrix similar to S_a S_b, in float64: stable for singular
    covariances, so no diagonal offset (ADM's fallback) is needed.
    """
    mu_a, mu_b = _float64(a.mu), _float64(b.mu)
    s_a, s_b = _float64(a.sigma), _float64(b.sigma)
    if mu_a.shape != mu_b.shape or s_a.shape != s_b.shape:
        raise ValueError(
            f"statistics of different feature sizes: mu {tuple(mu_a.shape)} vs {tuple(mu_b.shape)}, "
            f"sigma {tuple(s_a.shape)} vs {tuple(s_b.shape)}"
        )
    root_a = _psd_sqrt(s_a)
    cross = torch.linalg.eigvalsh(root_a @ s_b @ root_a).clamp_min(0).sqrt().sum()
    diff = mu_a - mu_b
    return float(diff @ diff + s_a.trace() + s_b.trace() - 2 * cross)


def _psd_sqrt(s: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a (numerically) PSD matrix."""
    values, vectors = torch.linalg.eigh((s + s.T) / 2)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def _float64(x: ArrayLike) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to("cpu", torch.float64)
