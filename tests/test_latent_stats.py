"""`latent_stats` writes RAE's per-position layout with exact float64 moments, or per channel on request."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from rae.autoencoder.stats import read_latent_stats
from rae.data.embedded import EmbeddedDataset
from rae.registry import ENCODERS
from rae.runner import main

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "fixtures" / "golden"
TINY = ["--gin_param", "embedded.size = 20", "--gin_param", "embedded.resolution = 40",
        "--gin_param", "dinov2.input_size = 56", "--gin_param", "dinov2.variant = 'base'",
        "--gin_param", f"dinov2.weights = '{GOLDEN / 'tiny_dinov2_registers'}'",
        "--gin_param", "latent_stats.batch_size = 6"]


def _stats(tmp_path: Path, *args: str) -> dict[str, torch.Tensor]:
    rc = main(["--gin", str(ROOT / "experiments" / "latent_stats_embedded.gin"), *TINY,
               "--gin_param", f"run.run_root = '{tmp_path / 'runs'}'", *args])
    assert rc == 0
    folder = next((tmp_path / "runs" / "latent_stats_embedded").iterdir())
    return torch.load(folder / "stat.pt", weights_only=True)


@pytest.fixture(scope="module")
def direct_latents() -> torch.Tensor:
    """Every image's latent (N, C, h, w), in float64, computed in one pass without the experiment."""
    encoder = ENCODERS.get("dinov2")(registers=True, variant="base", input_size=56,
                                     weights=str(GOLDEN / "tiny_dinov2_registers"))
    encoder.load_pretrained(allow_random=False, log=logging.getLogger("test"))
    images = torch.stack([EmbeddedDataset(size=20, resolution=40)[i][0] for i in range(20)])
    with torch.no_grad():
        tokens = encoder.eval()(images)
    return tokens.transpose(1, 2).reshape(20, 32, 4, 4).double()


def test_per_position_stats_equal_a_direct_float64_computation(tmp_path, direct_latents):
    stats = _stats(tmp_path)
    assert set(stats) == {"mean", "var"} and stats["mean"].shape == (32, 4, 4) and stats["var"].shape == (32, 4, 4)
    torch.testing.assert_close(stats["mean"].double(), direct_latents.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stats["var"].double(), direct_latents.var(0, unbiased=False), atol=1e-5, rtol=1e-5)
    # the reference's reader: torch.load, then (z - mean) / sqrt(var + eps) broadcast against (B, C, h, w)
    z = direct_latents.float()
    normalised = (z - stats.get("mean", 0)) / torch.sqrt(stats.get("var", 1) + 1e-5)
    assert normalised.shape == z.shape
    torch.testing.assert_close(normalised.mean(0), torch.zeros(32, 4, 4), atol=1e-4, rtol=0)
    mean, var = read_latent_stats(next((tmp_path / "runs" / "latent_stats_embedded").iterdir()) / "stat.pt",
                                  (32, 4, 4))
    assert torch.equal(mean[0], stats["mean"]) and torch.equal(var[0], stats["var"])


def test_per_channel_option(tmp_path, direct_latents):
    stats = _stats(tmp_path, "--gin_param", "latent_stats.per_channel = True")
    assert stats["mean"].shape == (1, 32, 1, 1)
    per_channel = direct_latents.transpose(0, 1).reshape(32, -1)
    torch.testing.assert_close(stats["mean"].double().flatten(), per_channel.mean(1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stats["var"].double().flatten(), per_channel.var(1, unbiased=False),
                               atol=1e-5, rtol=1e-5)
