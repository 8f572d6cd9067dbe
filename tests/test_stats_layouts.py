"""Latent stats in every layout RAE published: golden parity, the reference's arithmetic, clear refusals."""
from __future__ import annotations

import logging

import pytest
import torch

from rae.autoencoder.stats import read_latent_stats
from rae.runner import main
from rae.train.checkpoint import UnreadableFile
from rae.weights import UnusableWeights, load_pretrained_weights
from test_autoencoder import GOLDEN, tiny_rae

LOG = logging.getLogger("test")
LATENT = (32, 4, 4)
EPS = 1e-5


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN / "rae_position_stats.pt", weights_only=True)


def test_golden_per_position_stats_without_mean(golden, tmp_path):
    """RAE's calculate_stat.py layout: var (C, h, w), no mean; non-square input images."""
    stats = torch.load(GOLDEN / golden["stats"], weights_only=True)
    assert "mean" not in stats and tuple(stats["var"].shape) == LATENT
    decoder_file = tmp_path / "model.pt"
    torch.save(golden["decoder_state_dict"], decoder_file)
    model = tiny_rae(noise_tau=golden["config"]["noise_tau"], stats_path=str(GOLDEN / golden["stats"]),
                     decoder_path=str(decoder_file))
    load_pretrained_weights(model, allow_random=False, log=LOG)
    images = golden["inputs"]["image"]
    assert images.shape[-2] != images.shape[-1]
    with torch.no_grad():
        latent = model.eval().encode(images)
        reconstruction = model.decode(latent)
    torch.testing.assert_close(latent, golden["outputs"]["latent"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(reconstruction, golden["outputs"]["reconstruction"], atol=1e-5, rtol=1e-4)


def _reference_normalize(z: torch.Tensor, mean: torch.Tensor | None, var: torch.Tensor) -> torch.Tensor:
    """RAE's stage1/rae.py: (z - mean) / sqrt(var + eps), a missing mean being 0. A (C,) tensor is read per
    channel (the reference would broadcast it over the width, which fits no latent)."""
    per_channel = lambda t: t.view(-1, 1, 1) if t.dim() == 1 else t  # noqa: E731
    return (z - (0 if mean is None else per_channel(mean))) / torch.sqrt(per_channel(var) + EPS)


LAYOUTS = {"per_position": LATENT, "per_position_batched": (1, *LATENT), "per_channel": (1, 32, 1, 1),
           "flat_channels": (32,)}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mean", ["present", "absent", "none"])
def test_every_layout_normalises_as_the_reference(tmp_path, layout, mean):
    gen = torch.Generator().manual_seed(0)
    shape = LAYOUTS[layout]
    var = torch.rand(shape, generator=gen) * 3 + 0.1
    mean_value = torch.randn(shape, generator=gen)
    stats = {"var": var} | ({"mean": mean_value} if mean == "present" else {"mean": None} if mean == "none" else {})
    torch.save(stats, tmp_path / "stat.pt")
    model = tiny_rae(noise_tau=0.0, stats_path=str(tmp_path / "stat.pt"))
    model.load_pretrained(allow_random=False, log=LOG)
    z = torch.randn(3, *LATENT, generator=gen)
    expected = _reference_normalize(z, mean_value if mean == "present" else None, var)
    torch.testing.assert_close(model.normalize(z), expected, atol=0, rtol=0)
    torch.testing.assert_close(model.denormalize(model.normalize(z)), z, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stats", [
    {"var": torch.ones(32, 2, 2)},
    {"var": torch.ones(1, 8, 1, 1), "mean": torch.zeros(1, 8, 1, 1)},
    {"var": torch.ones(32, 4, 4), "mean": torch.zeros(16)},
    {"mean": torch.zeros(32)},
    {"var": torch.ones(32), "std": torch.ones(32)},
])
def test_shapes_that_fit_nothing_are_refused_naming_the_file_and_the_shapes(tmp_path, stats):
    torch.save(stats, tmp_path / "stat.pt")
    with pytest.raises(UnusableWeights) as info:
        read_latent_stats(tmp_path / "stat.pt", LATENT)
    message = str(info.value)
    assert str(tmp_path / "stat.pt") in message and "(32, 4, 4) or (1, 32, 4, 4) or (1, 32, 1, 1) or (32,)" in message
    assert "Found {" in message


def test_a_text_file_as_stats_is_named(tmp_path):
    (tmp_path / "stat.pt").write_text("not a tensor file")
    with pytest.raises(UnreadableFile, match=r"stat.pt: cannot read it as latent stats"):
        read_latent_stats(tmp_path / "stat.pt", LATENT)


def test_a_wrong_shape_stats_file_exits_2_through_the_runner(tmp_path, capsys):
    torch.save({"var": torch.ones(384, 3, 3)}, tmp_path / "stat.pt")
    rc = main(["--gin", "experiments/reconstruct_tiny.gin",
               "--gin_param", f"run.run_root = '{tmp_path / 'runs'}'",
               "--gin_param", f"rae.stats_path = '{tmp_path / 'stat.pt'}'"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "stat.pt" in err and "(384, 3, 3)" in err and "(1, 384, 1, 1)" in err and "Traceback" not in err


def test_builds_per_position_buffers_on_the_meta_device():
    with torch.device("meta"):
        model = tiny_rae(stats_path="stat.pt")
    assert tuple(model.latent_var.shape) == (1, *LATENT)
