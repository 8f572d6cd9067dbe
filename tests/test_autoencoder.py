"""The RAE autoencoder: golden parity through our loading path, noise augmentation, latent stats."""
from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import pytest
import torch

import rae.encoders  # noqa: F401  (registers @encoder.dinov2)
from rae.autoencoder.rae import RAE
from rae.decoders.vit import ViTDecoder
from rae.registry import AUTOENCODERS, ENCODERS
from rae.weights import WeightsNotFound, load_pretrained_weights

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
LOG = logging.getLogger("test")
TINY_DECODER = partial(ViTDecoder, size="tiny", patch_size=8)


def tiny_encoder():
    return ENCODERS.get("dinov2")(registers=True, variant="base", input_size=56,
                                  weights=str(GOLDEN / "tiny_dinov2_registers"))


def tiny_rae(**kwargs) -> RAE:
    return AUTOENCODERS.get("rae")(tiny_encoder(), TINY_DECODER, **kwargs)


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN / "rae.pt", weights_only=True)


@pytest.fixture(scope="module")
def released(golden, tmp_path_factory) -> RAE:
    """The golden autoencoder loaded as a user would: a release-layout model.pt and a stat.pt."""
    decoder_file = tmp_path_factory.mktemp("release") / "model.pt"
    torch.save(golden["decoder_state_dict"], decoder_file)
    model = tiny_rae(noise_tau=golden["config"]["noise_tau"], stats_path=str(GOLDEN / "tiny_stats.pt"),
                     decoder_path=str(decoder_file))
    load_pretrained_weights(model, allow_random=False, log=LOG)
    return model.eval()


def test_golden_latent_and_reconstruction(golden, released):
    with torch.no_grad():
        latent = released.encode(golden["inputs"]["image"])
        image = released.decode(latent)
    torch.testing.assert_close(latent, golden["outputs"]["latent"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(image, golden["outputs"]["reconstruction"], atol=1e-5, rtol=1e-4)
    assert released.latent_shape == (32, 4, 4)


def test_decode_maps_decoder_pixels_back_to_the_unit_scale(golden, released):
    latent = golden["outputs"]["latent"]
    with torch.no_grad():
        raw = latent * torch.sqrt(released.latent_var + 1e-5) + released.latent_mean
        pixels = released.decoder(raw)
        mean = torch.tensor(released.encoder.pixel_mean).view(1, 3, 1, 1)
        std = torch.tensor(released.encoder.pixel_std).view(1, 3, 1, 1)
        torch.testing.assert_close(released.decode(latent), pixels * std + mean)


@pytest.mark.parametrize("wrapper", ["model", "ema"])
def test_wrapped_release_checkpoints_load_the_same_decoder(golden, released, tmp_path, wrapper):
    path = tmp_path / "model.pt"
    torch.save({wrapper: golden["decoder_state_dict"]}, path)
    model = tiny_rae(noise_tau=0.0, decoder_path=str(path))
    model.load_pretrained(allow_random=False, log=LOG)
    for name, value in released.decoder.state_dict().items():
        assert torch.equal(model.decoder.state_dict()[name], value), name


def test_noise_only_in_train_mode(golden):
    model = tiny_rae(noise_tau=0.8)
    images = golden["inputs"]["image"]
    with torch.no_grad():
        model.eval()
        clean = model.encode(images)
        assert torch.equal(model.encode(images), clean)
        model.train()
        assert not model.encoder.training
        noisy = model.encode(images)
    assert not torch.allclose(noisy, clean)
    assert torch.allclose(model.eval().encode(images), clean)


def test_noise_sigma_is_uniform_per_sample_and_bounded_by_tau():
    model = tiny_rae(noise_tau=0.8)
    z = torch.zeros(256, 32, 4, 4)
    noisy = model.add_noise(z, generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    sigma = 0.8 * torch.rand(256, 1, 1, 1, generator=gen)
    torch.testing.assert_close(noisy, sigma * torch.randn(z.shape, generator=gen))
    spread = noisy.flatten(1).std(dim=1)
    assert spread.max() < 0.8 * 1.15 and spread.min() < 0.1 and spread.mean() == pytest.approx(0.4, abs=0.06)


def test_stats_are_buffers_that_round_trip_in_the_state_dict(released, golden):
    stats = torch.load(GOLDEN / "tiny_stats.pt", weights_only=True)
    buffers = dict(released.named_buffers())
    per_position = (1, 32, 4, 4)  # a per-channel file is expanded over the token grid
    assert torch.equal(buffers["latent_mean"], stats["mean"].expand(per_position))
    assert torch.equal(buffers["latent_var"], stats["var"].expand(per_position))
    assert "latent_mean" not in dict(released.named_parameters())
    copy = tiny_rae(noise_tau=0.0, stats_path="unread.pt")
    copy.load_state_dict(released.state_dict())
    assert torch.equal(copy.latent_var, stats["var"].expand(per_position))
    images = golden["inputs"]["image"]
    with torch.no_grad():
        torch.testing.assert_close(copy.eval()(images), released(images))
    z = torch.randn(2, 32, 4, 4)
    torch.testing.assert_close(released.denormalize(released.normalize(z)), z)


def test_without_stats_latents_are_the_raw_encoder_grid(golden):
    model = tiny_rae(noise_tau=0.0).eval()
    images = golden["inputs"]["image"]
    with torch.no_grad():
        tokens = model.encoder(images)
        latent = model.encode(images)
    assert not model.normalizes and "latent_mean" not in model.state_dict()
    torch.testing.assert_close(latent, tokens.transpose(1, 2).reshape(2, 32, 4, 4))


def test_absent_files_refuse_unless_random_weights_are_allowed(tmp_path, caplog):
    model = tiny_rae(stats_path=str(tmp_path / "stat.pt"), decoder_path=str(tmp_path / "model.pt"))
    with pytest.raises(WeightsNotFound, match="RAE latent stats: tried .*stat.pt"):
        model.load_pretrained(allow_random=False, log=LOG)
    decoder_only = RAE(model.encoder, TINY_DECODER, decoder_path=str(tmp_path / "model.pt"))
    with pytest.raises(WeightsNotFound, match="the RAE decoder: tried .*model.pt"):
        decoder_only.load_pretrained(allow_random=False, log=LOG)
    with caplog.at_level(logging.WARNING):
        model.load_pretrained(allow_random=True, log=LOG)
    assert "RANDOM WEIGHTS for the RAE latent stats" in caplog.text
    assert torch.equal(model.latent_var, torch.ones(1, 32, 4, 4))




def test_a_built_decoder_must_fit_the_encoder():
    with pytest.raises(ValueError, match=r"decoder takes latents \(16, 4, 4\) but the encoder makes \(32, 4, 4\)"):
        RAE(tiny_encoder(), ViTDecoder(in_channels=16, token_grid=(4, 4), size="tiny"))


def test_builds_on_the_meta_device():
    with torch.device("meta"):
        model = tiny_rae(stats_path="stat.pt")
    assert model.latent_mean.is_meta and model.decoder.last_layer.is_meta
    assert model.decoder.image_size == (32, 32)
