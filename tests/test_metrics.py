"""Evaluation metrics against independent computations: scipy's sqrtm, brute-force k-NN, IS from logits.

A tiny random feature extractor stands in for Inception (the same interface); the real
Inception network is checked for wiring against torch-fidelity's, with random weights.
"""
import logging
import math

import numpy as np
import pytest
import torch
from scipy import linalg
from scipy.spatial.distance import cdist
from torch import nn

from rae.metrics import (
    FeatureExtractor, GaussianStats, InceptionFeatures, InceptionV3, evaluate_npz, extract_features,
    frechet_distance, inception_score, iterate_npz_images, load_reference, precision_recall, reconstruction_fid,
)
from rae.metrics.inception import WEIGHTS_FILE, WEIGHTS_URL
from rae.weights import WeightsNotFound

LOG = logging.getLogger("test")


def random_psd(d: int, rank: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(d, rank))
    return a @ a.T / rank


def scipy_frechet(mu1, s1, mu2, s2) -> float:
    """The TTUR/ADM formula with scipy's matrix square root."""
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


# ---- Fréchet distance ----

@pytest.mark.parametrize("rank", [40, 8])  # full rank, and singular covariances
def test_frechet_distance_matches_scipy_sqrtm(rank):
    d, rng = 16, np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = random_psd(d, rank, 1), random_psd(d, rank, 2)
    ours = frechet_distance(GaussianStats(mu1, s1), GaussianStats(mu2, s2))
    assert math.isclose(ours, scipy_frechet(mu1, s1, mu2, s2), rel_tol=1e-6, abs_tol=1e-6)
    assert abs(frechet_distance(GaussianStats(mu1, s1), GaussianStats(mu1, s1))) < 1e-6


def test_frechet_distance_of_diagonal_gaussians_is_closed_form():
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = 1.0**2 + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    got = frechet_distance(GaussianStats(np.zeros(3), np.diag(v1)), GaussianStats(np.array([1.0, 0, 0]), np.diag(v2)))
    assert math.isclose(got, expected, rel_tol=1e-9)


def test_gaussian_stats_are_numpy_mean_and_cov():
    f = np.random.default_rng(3).normal(size=(50, 6)).astype(np.float32)
    stats = GaussianStats.of(torch.from_numpy(f))
    assert np.allclose(stats.mu, f.astype(np.float64).mean(0))
    assert np.allclose(stats.sigma, np.cov(f.astype(np.float64), rowvar=False))
    with pytest.raises(ValueError, match="statistics of different feature sizes"):
        frechet_distance(stats, GaussianStats(np.zeros(5), np.eye(5)))


# ---- Inception Score ----

def direct_inception_score(logits: np.ndarray, split_size: int) -> float:
    scores = []
    for i in range(0, len(logits), split_size):
        part = logits[i:i + split_size].astype(np.float64)
        p = np.exp(part - part.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        kl = (p * (np.log(p) - np.log(p.mean(0, keepdims=True)))).sum(1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores))


def test_inception_score_matches_a_direct_computation():
    logits = np.random.default_rng(4).normal(scale=3.0, size=(70, 12))
    for split in (70, 25):
        ours = inception_score(torch.from_numpy(logits).float(), split_size=split)
        assert math.isclose(ours, direct_inception_score(logits.astype(np.float32), split), rel_tol=1e-6)


def test_inception_score_limits():
    assert math.isclose(inception_score(torch.zeros(10, 7)), 1.0)  # all uniform: no information
    confident = torch.full((8, 8), -1e4).fill_diagonal_(0.0)  # 8 distinct certain classes
    assert math.isclose(inception_score(confident), 8.0, rel_tol=1e-6)


# ---- precision and recall ----

def brute_force_precision_recall(ref: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    def radii(x):
        d = cdist(x, x, "sqeuclidean")
        return np.sort(d, axis=1)[:, k]  # column 0 is the point itself

    r_ref, r_fake = radii(ref), radii(fake)
    d = cdist(fake, ref, "sqeuclidean")
    precision = np.mean([(d[i] <= r_ref).any() for i in range(len(fake))])
    recall = np.mean([(d[:, j] <= r_fake).any() for j in range(len(ref))])
    return precision, recall


def test_precision_recall_match_brute_force_knn():
    rng = np.random.default_rng(5)
    ref = rng.normal(size=(60, 3))
    fake = rng.normal(loc=1.2, scale=0.6, size=(45, 3))
    expected = brute_force_precision_recall(ref, fake, 3)
    got = precision_recall(torch.from_numpy(ref), torch.from_numpy(fake), k=3, batch_size=7)
    assert got == pytest.approx(expected, abs=1e-12)
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1  # a case that is neither trivial 0 nor 1
    with pytest.raises(ValueError, match="more than k=3"):
        precision_recall(torch.zeros(3, 3), torch.zeros(10, 3))


# ---- feature extraction and the evaluation suite, with a tiny extractor ----

class TinyExtractor(FeatureExtractor):
    """Random convolutional features with the Inception interface: pool (8), spatial (2*4*4), logits (5)."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.head = nn.Linear(8, 5)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        self.batch_sizes: list[int] = []

    def forward(self, images: torch.Tensor) -> InceptionFeatures:
        self.batch_sizes.append(images.shape[0])
        h = torch.relu(self.conv(images.float() / 127.5 - 1))
        pool = h.mean((2, 3))
        spatial = nn.functional.adaptive_avg_pool2d(h[:, :2], 4).permute(0, 2, 3, 1).flatten(1)
        return InceptionFeatures(pool, spatial, self.head(pool))


def images(n: int, seed: int, bright: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.integers(0, 200, size=(n, 16, 16, 3)) + bright, 0, 255).astype(np.uint8)


def test_npz_images_stream_in_batches(tmp_path):
    arr = images(23, 0)
    np.savez(tmp_path / "s.npz", arr_0=arr)
    batches = list(iterate_npz_images(tmp_path / "s.npz", batch_size=10))
    assert [len(b) for b in batches] == [10, 10, 3]
    assert np.array_equal(np.concatenate(batches), arr)
    np.savez(tmp_path / "f.npz", arr_0=arr.astype(np.float32))
    with pytest.raises(ValueError, match="uint8 images"):
        next(iterate_npz_images(tmp_path / "f.npz", 4))
    with pytest.raises(ValueError, match="no array 'arr_0'.*'mu'"):
        np.savez(tmp_path / "m.npz", mu=np.zeros(3))
        next(iterate_npz_images(tmp_path / "m.npz", 4))


def test_extraction_is_batched_and_batch_size_independent():
    extractor = TinyExtractor()
    arr = images(20, 1)
    one = extract_features(extractor, [arr])
    extractor.batch_sizes.clear()
    many = extract_features(extractor, [arr[i:i + 6] for i in range(0, 20, 6)])
    assert extractor.batch_sizes == [6, 6, 6, 2]
    for a, b in zip(one, many):
        assert torch.allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="uint8 NHWC"):
        extract_features(extractor, [arr.transpose(0, 3, 1, 2).copy()])


def test_evaluate_npz_matches_the_metrics_computed_directly(tmp_path):
    extractor = TinyExtractor()
    ref, fake = images(40, 2), images(30, 3, bright=40)
    np.savez(tmp_path / "ref.npz", arr_0=ref)
    np.savez(tmp_path / "samples.npz", arr_0=fake)
    metrics = evaluate_npz(tmp_path / "samples.npz", tmp_path / "ref.npz", extractor, batch_size=8)

    with torch.no_grad():
        r = extractor(torch.from_numpy(ref).permute(0, 3, 1, 2))
        f = extractor(torch.from_numpy(fake).permute(0, 3, 1, 2))
    r, f = [InceptionFeatures(*(t.double().numpy() for t in x)) for x in (r, f)]

    def fd(a, b):
        return scipy_frechet(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))

    assert metrics["fid"] == pytest.approx(fd(f.pool, r.pool), rel=1e-4)
    assert metrics["sfid"] == pytest.approx(fd(f.spatial, r.spatial), rel=1e-4)
    assert metrics["inception_score"] == pytest.approx(direct_inception_score(f.logits, 5000), rel=1e-5)
    p, rec = brute_force_precision_recall(r.pool, f.pool, 3)
    assert (metrics["precision"], metrics["recall"]) == pytest.approx((p, rec), abs=1e-12)
    assert metrics["fid"] > 1e-3


def test_reference_statistics_are_used_when_present(tmp_path):
    """ADM's reference files carry mu, sigma, mu_s, sigma_s; without images there is no precision/recall."""
    extractor = TinyExtractor()
    stats = dict(mu=np.ones(8), sigma=np.eye(8), mu_s=np.zeros(32), sigma_s=np.eye(32))
    np.savez(tmp_path / "stats.npz", **stats)
    reference = load_reference(tmp_path / "stats.npz", extractor)
    assert reference.pool_features is None and np.array_equal(reference.pool.mu, stats["mu"])
    np.savez(tmp_path / "samples.npz", arr_0=images(12, 4))
    metrics = evaluate_npz(tmp_path / "samples.npz", tmp_path / "stats.npz", extractor)
    assert set(metrics) == {"fid", "sfid", "inception_score"}
    pool = extract_features(extractor, [images(12, 4)]).pool.double().numpy()
    assert metrics["fid"] == pytest.approx(scipy_frechet(pool.mean(0), np.cov(pool, rowvar=False),
                                                         stats["mu"], stats["sigma"]), rel=1e-4)


def test_reconstruction_fid_is_zero_for_perfect_reconstructions():
    extractor, real = TinyExtractor(), images(24, 5)
    assert abs(reconstruction_fid([real], [real[:12], real[12:]], extractor)) < 1e-6
    assert reconstruction_fid([real], [images(24, 6, bright=60)], extractor) > 1e-3


# ---- the Inception network ----

def test_inception_weights_are_never_downloaded_silently(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with torch.device("meta"):
        net = InceptionV3()
    with pytest.raises(WeightsNotFound) as err:
        net.load_pretrained(allow_random=False, log=LOG)
    assert WEIGHTS_FILE in str(err.value) and WEIGHTS_URL in str(err.value)
    assert str(tmp_path / "hub" / "checkpoints") in str(err.value)


@pytest.mark.slow
def test_inception_matches_torch_fidelity_and_exposes_adm_spatial_features(tmp_path):
    """Same weights in torch-fidelity's extractor give the same pool3 and unbiased logits;
    the spatial features are Mixed_6d's 1x1 branch (TF mixed_6/conv), 7 channels, NHWC."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    torch.manual_seed(0)
    ours = InceptionV3()
    with torch.no_grad():  # make batch norm non-trivial so the wiring matters
        for name, buffer in ours.named_buffers():
            if name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
    torch.save(ours.state_dict(), tmp_path / WEIGHTS_FILE)
    ours = InceptionV3(weights_path=str(tmp_path / WEIGHTS_FILE))
    ours.load_pretrained(allow_random=False, log=LOG)
    theirs = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                         feature_extractor_weights_path=str(tmp_path / WEIGHTS_FILE))
    captured = {}
    ours.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: captured.setdefault("conv", o))
    x = torch.from_numpy(images(1, 7)).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        features = ours(x)
        pool, logits = theirs(x)
    assert features.pool.shape == (1, 2048) and features.logits.shape == (1, 1008)
    assert torch.allclose(features.pool, pool, atol=1e-5)
    assert torch.allclose(features.logits, logits, atol=1e-4)
    assert features.spatial.shape == (1, 17 * 17 * 7)
    assert torch.equal(features.spatial, captured["conv"][:, :7].permute(0, 2, 3, 1).flatten(1))
