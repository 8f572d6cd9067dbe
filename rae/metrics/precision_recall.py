"""Improved precision and recall (Kynkäänniemi et al. 2019) with k = 3, as ADM's evaluator.

Each feature set estimates its manifold as the union of balls around its points, the
radius of each being the distance to its k-th nearest neighbour in the same set.
Precision: fraction of samples inside the reference manifold; recall: fraction of
references inside the sample manifold. Distances are squared Euclidean, as ADM's.
"""
from __future__ import annotations

import torch


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, M) matrix of |a_i - b_j|^2, clamped at 0 against round-off."""
    a_sq = a.pow(2).sum(1, keepdim=True)
    b_sq = b.pow(2).sum(1).unsqueeze(0)
    return (a_sq - 2 * a @ b.T + b_sq).clamp_min(0)


def knn_radii(features: torch.Tensor, k: int = 3, batch_size: int = 5000) -> torch.Tensor:
    """Squared distance of each point to its k-th nearest other point (the point itself is 0th)."""
    if features.shape[0] <= k:
        raise ValueError(f"need more than k={k} feature vectors to estimate a manifold, got {features.shape[0]}")
    return torch.cat([
        squared_distances(rows, features).kthvalue(k + 1, dim=1).values
        for rows in features.split(batch_size)
    ])


def coverage(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, batch_size: int = 5000) -> torch.Tensor:
    """Per point: whether it lies within the radius of any centre (distance <= radius, as ADM)."""
    return torch.cat([
        (squared_distances(rows, centres) <= radii.unsqueeze(0)).any(1)
        for rows in points.split(batch_size)
    ])


def precision_recall(
    reference: torch.Tensor, samples: torch.Tensor, k: int = 3, batch_size: int = 5000
) -> tuple[float, float]:
    """(precision, recall) of ``samples`` against ``reference``, both (N, D) features."""
    if reference.shape[1] != samples.shape[1]:
        raise ValueError(f"feature sizes differ: reference {reference.shape[1]}, samples {samples.shape[1]}")
    ref_radii = knn_radii(reference, k, batch_size)
    sample_radii = knn_radii(samples, k, batch_size)
    precision = coverage(samples, reference, ref_radii, batch_size).double().mean()
    recall = coverage(reference, samples, sample_radii, batch_size).double().mean()
    return float(precision), float(recall)
