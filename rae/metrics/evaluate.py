"""ADM's evaluation suite in PyTorch: FID, sFID, IS, precision and recall of a sample batch, and rFID."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from rae.metrics.features import FeatureExtractor, InceptionFeatures, extract_features, iterate_npz_images, npz_keys
from rae.metrics.frechet import GaussianStats, frechet_distance
from rae.metrics.inception_score import inception_score
from rae.metrics.precision_recall import precision_recall

STATS_KEYS = ("mu", "sigma", "mu_s", "sigma_s")


@dataclass
class Reference:
    """A reference batch: pool3 and spatial statistics, and pool3 features when it holds images."""

    pool: GaussianStats
    spatial: GaussianStats
    pool_features: torch.Tensor | None


def features_of_npz(
    path: str | Path, extractor: FeatureExtractor, batch_size: int = 64, device: torch.device | str = "cpu"
) -> InceptionFeatures:
    """Features of the uint8 NHWC images ``arr_0`` of an ``.npz`` file, streamed in batches."""
    return extract_features(extractor, iterate_npz_images(path, batch_size), device)


def load_reference(
    path: str | Path, extractor: FeatureExtractor, batch_size: int = 64, device: torch.device | str = "cpu"
) -> Reference:
    """An ADM reference ``.npz``: precomputed ``mu, sigma, mu_s, sigma_s`` when present (as ADM
    prefers them), and features of its ``arr_0`` images when present (for precision and recall)."""
    keys = npz_keys(path)
    features = features_of_npz(path, extractor, batch_size, device) if "arr_0" in keys else None
    if all(k in keys for k in STATS_KEYS):
        with np.load(path) as data:
            pool = GaussianStats(data["mu"], data["sigma"])
            spatial = GaussianStats(data["mu_s"], data["sigma_s"])
    elif features is not None:
        pool, spatial = GaussianStats.of(features.pool), GaussianStats.of(features.spatial)
    else:
        raise ValueError(f"{path} holds neither images (arr_0) nor statistics {STATS_KEYS}; it has {keys}")
    return Reference(pool, spatial, None if features is None else features.pool)


def sample_metrics(
    samples: InceptionFeatures,
    reference: Reference,
    is_split_size: int = 5000,
    k: int = 3,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """FID, sFID, Inception Score and, when the reference has images, precision and recall
    (whose pairwise distances are computed on ``device``)."""
    metrics = {
        "fid": frechet_distance(GaussianStats.of(samples.pool), reference.pool),
        "sfid": frechet_distance(GaussianStats.of(samples.spatial), reference.spatial),
        "inception_score": inception_score(samples.logits, is_split_size),
    }
    if reference.pool_features is not None:
        metrics["precision"], metrics["recall"] = precision_recall(
            reference.pool_features.to(device), samples.pool.to(device), k
        )
    return metrics


def evaluate_npz(
    samples_path: str | Path,
    reference_path: str | Path,
    extractor: FeatureExtractor,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """ADM's evaluator: a samples ``.npz`` (uint8 NHWC ``arr_0``) against a reference ``.npz``."""
    reference = load_reference(reference_path, extractor, batch_size, device)
    samples = features_of_npz(samples_path, extractor, batch_size, device)
    return sample_metrics(samples, reference, device=device)


def reconstruction_fid(
    originals: Iterable[np.ndarray | torch.Tensor],
    reconstructions: Iterable[np.ndarray | torch.Tensor],
    extractor: FeatureExtractor,
    device: torch.device | str = "cpu",
) -> float:
    """rFID: FID of reconstructions against the images they reconstruct (batches of uint8 NHWC)."""
    real = extract_features(extractor, originals, device)
    fake = extract_features(extractor, reconstructions, device)
    return frechet_distance(GaussianStats.of(fake.pool), GaussianStats.of(real.pool))
