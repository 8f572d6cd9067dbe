"""The Stable Diffusion VAE plugin (REPA's latent space) on a tiny local AutoencoderKL."""
import importlib.util
import logging
import sys

import pytest
import torch

from rae.registry import AUTOENCODERS
from rae.vae.sd_vae import SDVAE, autoencoder_kl, sample_posterior
from rae.weights import WeightsNotFound

LOG = logging.getLogger("test_sd_vae")
needs_diffusers = pytest.mark.skipif(
    importlib.util.find_spec("diffusers") is None, reason="diffusers (the optional extra rae[vae]) is not installed"
)
TINY = dict(
    in_channels=3, out_channels=3, latent_channels=4, down_block_types=["DownEncoderBlock2D"] * 2,
    up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 16], layers_per_block=1, norm_num_groups=4,
    sample_size=16,
)


@pytest.fixture(scope="module")
def tiny_vae_dir(tmp_path_factory):
    """A 2-level AutoencoderKL (downsampling 2) saved with ``save_pretrained``, every weight perturbed."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(**TINY)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("tiny_sd_vae")
    vae.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def reference(tiny_vae_dir):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(tiny_vae_dir).eval()


@pytest.fixture()
def plugin(tiny_vae_dir):
    model = SDVAE(weights=str(tiny_vae_dir), image_size=16)
    model.load_pretrained(allow_random=False, log=LOG)
    return model.eval()


@needs_diffusers
def test_encode_scales_the_posterior_mean_and_decode_inverts(plugin, reference):
    images = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        latents = plugin.encode(images)
        mean = reference.encode(images * 2 - 1).latent_dist.mean
        torch.testing.assert_close(latents, mean * 0.18215)
        assert latents.shape == (2, *plugin.latent_shape) == (2, 4, 8, 8)

        decoded = plugin.decode(latents)
        expected = (reference.decode(latents / 0.18215).sample + 1) / 2
        torch.testing.assert_close(decoded, expected)
        assert decoded.shape == images.shape
        torch.testing.assert_close(plugin(images), decoded)


@needs_diffusers
def test_training_mode_draws_from_the_posterior(plugin, reference):
    images = torch.rand(2, 3, 16, 16)
    plugin.train()
    with torch.no_grad():
        torch.manual_seed(3)
        drawn = plugin.encode(images)
        torch.manual_seed(3)
        expected = reference.encode(images * 2 - 1).latent_dist.sample() * 0.18215
    torch.testing.assert_close(drawn, expected)
    assert not torch.allclose(drawn, reference.encode(images * 2 - 1).latent_dist.mean * 0.18215)


def test_sample_posterior_is_repas_draw_from_the_stored_moments():
    """REPA's train.py: z = (mean + std * randn) * latents_scale + latents_bias, a fresh draw per call."""
    g = torch.Generator().manual_seed(0)
    mean, std = torch.randn(1, 4, 2, 2, generator=g), torch.rand(1, 4, 2, 2, generator=g) + 0.5
    first = sample_posterior(mean, std, generator=torch.Generator().manual_seed(1))
    eps = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(first, (mean + std * eps) * 0.18215)
    torch.testing.assert_close(sample_posterior(mean, std, 0.5, 0.25, torch.Generator().manual_seed(1)),
                               (mean + std * eps) * 0.5 + 0.25)
    draws = sample_posterior(mean.expand(20000, -1, -1, -1), std.expand(20000, -1, -1, -1), generator=g)
    assert not torch.allclose(draws[0], draws[1])
    torch.testing.assert_close(draws.mean(0), mean[0] * 0.18215, atol=0.01, rtol=0)
    torch.testing.assert_close(draws.var(0), (std[0] * 0.18215) ** 2, rtol=0.05, atol=0)


@needs_diffusers
def test_training_mode_latents_have_the_posterior_variance(plugin, reference):
    image = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        posterior = reference.encode(image * 2 - 1).latent_dist
        torch.manual_seed(0)
        draws = plugin.train().encode(image.expand(2000, -1, -1, -1))
    mean, std = posterior.mean[0] * 0.18215, posterior.std[0] * 0.18215
    assert (draws - mean).abs().amax() > 0.1 * std.min()  # a draw, not the posterior mean
    torch.testing.assert_close(draws.mean(0), mean, atol=float(4 * std.max() / 2000 ** 0.5), rtol=0)
    torch.testing.assert_close(draws.var(0), std**2, rtol=0.15, atol=0)


@needs_diffusers
def test_custom_scale_and_bias_round_trip(tiny_vae_dir, reference):
    model = SDVAE(weights=str(tiny_vae_dir), image_size=16, scaling_factor=0.5, latent_bias=0.25,
                  sample_posterior=False)
    model.load_pretrained(allow_random=False, log=LOG)
    images = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        z = reference.encode(images * 2 - 1).latent_dist.mean
        latents = model.train().encode(images)  # sample_posterior=False: the mean even in training mode
        torch.testing.assert_close(latents, z * 0.5 + 0.25)
        torch.testing.assert_close(model.decode(latents), (reference.decode(z).sample + 1) / 2, atol=1e-5, rtol=1e-4)


@needs_diffusers
def test_frozen_and_registered(plugin):
    assert AUTOENCODERS.get("sd_vae") is SDVAE
    assert all(not p.requires_grad for p in plugin.parameters())


@needs_diffusers
def test_sd_vae_architecture_builds_on_meta_without_weights():
    """The default (sd-vae-ft-mse) architecture: 83,653,863 parameters, 4 x 32 x 32 latents at 256 px."""
    with torch.device("meta"):
        model = SDVAE()
    assert sum(p.numel() for p in model.parameters()) == 83_653_863
    assert model.latent_shape == (4, 32, 32)


@needs_diffusers
def test_missing_weights_refused_unless_allowed(tmp_path, caplog):
    with torch.device("meta"):  # the SD VAE architecture (no folder to read one from), never materialised
        model = SDVAE(weights=str(tmp_path / "absent"))
    with pytest.raises(WeightsNotFound, match="SD VAE"):
        model.load_pretrained(allow_random=False, log=LOG)
    with caplog.at_level(logging.WARNING):
        model.load_pretrained(allow_random=True, log=LOG)
    assert "RANDOM WEIGHTS" in caplog.text


@needs_diffusers
def test_bad_shapes_fail_clearly(plugin):
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\).*sd_vae.image_size"):
        plugin.encode(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"latents \(B, 4, h, w\)"):
        plugin.decode(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="multiple of the VAE's downsampling factor 8"):
        SDVAE(image_size=100)


def test_missing_diffusers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # makes `import diffusers` fail
    with pytest.raises(ImportError, match=r"pip install 'rae\[vae\]'"):
        autoencoder_kl()
