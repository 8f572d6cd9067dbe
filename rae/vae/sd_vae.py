"""`@autoencoder.sd_vae`: the Stable Diffusion VAE (diffusers ``AutoencoderKL``), REPA's latent space.

Latents as REPA makes them (``train.py``: ``latents_scale`` 0.18215 on all four channels,
``latents_bias`` 0): z = a draw from the VAE's posterior, then z * scale + bias. REPA caches the
posterior's mean and std (``preprocessing/encoders.py``, in fp32) and draws a fresh sample from
them at every training step (``train.py``'s ``sample_posterior``, `sample_posterior` here); here
``encode`` draws one in training mode (stage 2 with ``stochastic_encode``) and takes the
posterior mean in eval mode.
``decode`` inverts the scaling and maps the VAE's [-1, 1] pixels to the [0, 1] scale.

diffusers is an optional extra (``pip install rae[vae]``); it is imported only when this
plugin is built, so the rest of the package never needs it.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rae.encoders.hf import copy_weights, read_hub_or_folder
from rae.hub import offline
from rae.registry import AUTOENCODERS
from rae.weights import Pretrained

SD_VAE_HUB_ID = "stabilityai/sd-vae-ft-mse"
"""REPA trains on ``sd-vae-ft-mse`` latents; its ``generate.py`` decodes with ``sd-vae-ft-ema`` by default."""

SD_VAE_ARCHITECTURE: dict[str, Any] = {
    # config.json of stabilityai/sd-vae-ft-mse (sd-vae-ft-ema has the same architecture)
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "sample_size": 256,
}
REPA_LATENT_SCALE = 0.18215
"""The SD VAE's scaling factor, REPA's ``latents_scale`` (its ``latents_bias`` is 0)."""


def sample_posterior(mean: torch.Tensor, std: torch.Tensor, scale: float = REPA_LATENT_SCALE, bias: float = 0.0,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """(mean + std * eps) * scale + bias with a fresh eps ~ N(0, I): REPA's ``sample_posterior`` of ``train.py``."""
    device = generator.device if generator is not None else mean.device
    eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=device).to(mean.device)
    return (mean + std * eps) * scale + bias


def autoencoder_kl() -> type:
    """diffusers' ``AutoencoderKL`` class, or an error that names the extra to install."""
    try:
        from diffusers import AutoencoderKL
    except ImportError as exc:
        raise ImportError(
            "the sd_vae autoencoder needs diffusers, an optional extra: pip install 'rae[vae]' "
            "(or pip install diffusers)"
        ) from exc
    return AutoencoderKL


def vae_architecture(weights: str | None) -> dict[str, Any]:
    """A local ``save_pretrained`` folder's config.json, else the SD VAE's (no network either way)."""
    if weights is not None and Path(weights).expanduser().is_dir():
        config_path = Path(weights).expanduser() / "config.json"
        if not config_path.is_file():
            raise ValueError(f"sd_vae weights folder {weights} has no config.json; expected a diffusers "
                             "save_pretrained folder of an AutoencoderKL")
        return json.loads(config_path.read_text())
    return dict(SD_VAE_ARCHITECTURE)


@AUTOENCODERS.register("sd_vae")
class SDVAE(nn.Module, Pretrained):
    """Frozen SD VAE: images in [0, 1] (B, 3, S, S) <-> latents (B, 4, S/f, S/f), S = ``image_size``, f = 8.

    ``weights``: a hub id or a local diffusers folder, read by ``load_pretrained`` only.
    ``scaling_factor``/``latent_bias``: latents = z * scaling_factor + latent_bias (REPA: 0.18215, 0).
    ``sample_posterior``: draw z from the posterior in training mode (REPA) or always use its mean.
    """

    def __init__(
        self,
        weights: str | None = SD_VAE_HUB_ID,
        image_size: int = 256,
        scaling_factor: float = REPA_LATENT_SCALE,
        latent_bias: float = 0.0,
        sample_posterior: bool = True,
    ) -> None:
        super().__init__()
        if scaling_factor <= 0:
            raise ValueError(f"sd_vae.scaling_factor must be positive, got {scaling_factor}")
        config = vae_architecture(weights)
        self.downsample = 2 ** (len(config["block_out_channels"]) - 1)
        if image_size <= 0 or image_size % self.downsample:
            raise ValueError(f"sd_vae.image_size must be a positive multiple of the VAE's downsampling "
                             f"factor {self.downsample}, got {image_size}")
        self.vae = autoencoder_kl().from_config(config)
        self.vae.requires_grad_(False)
        self.weights = weights
        self.image_size = image_size
        self.latent_channels = config.get("latent_channels", 4)
        self.scaling_factor = scaling_factor
        self.latent_bias = latent_bias
        self.sample_posterior = sample_posterior

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the latents of ``image_size`` images: 4 x 32 x 32 at 256 px."""
        side = self.image_size // self.downsample
        return self.latent_channels, side, side

    def _posterior(self, images: torch.Tensor) -> Any:
        """The VAE's diagonal Gaussian posterior of images in [0, 1] (B, 3, image_size, image_size)."""
        expected = (3, self.image_size, self.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"sd_vae expects images of shape (B, {', '.join(map(str, expected))}) in [0, 1], "
                             f"got {tuple(images.shape)}; set sd_vae.image_size to the data's resolution")
        return self.vae.encode(images * 2 - 1).latent_dist

    def moments(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> the posterior's moments (B, 2C, h, w), mean then log-variance as the VAE
        outputs them (unclamped, unscaled): U-ViT's ``encode_moments``, which REPA's MS-COCO features store."""
        return self._posterior(images).parameters

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (B, 3, image_size, image_size) -> scaled latents (B, C, h, w)."""
        posterior = self._posterior(images)
        if self.training and self.sample_posterior:
            return sample_posterior(posterior.mean, posterior.std, self.scaling_factor, self.latent_bias)
        return posterior.mean * self.scaling_factor + self.latent_bias

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, C, h, w) -> images (B, 3, f*h, f*w) on the [0, 1] scale, not clamped (f = 8)."""
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"sd_vae expects latents (B, {self.latent_channels}, h, w), got {tuple(latents.shape)}")
        pixels = self.vae.decode((latents - self.latent_bias) / self.scaling_factor).sample
        return (pixels + 1) / 2

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstruction of ``images`` (both on the [0, 1] scale)."""
        return self.decode(self.encode(images))

    def load_pretrained(self, allow_random: bool, log: logging.Logger) -> None:
        """Weights from the hub id or local folder in ``weights``; every key must fit."""
        what = "the SD VAE (sd_vae)"
        how = (f"Download it on a networked machine (`hf download {SD_VAE_HUB_ID}`) and copy the Hugging Face "
               "cache here, or point sd_vae.weights at a local diffusers save_pretrained folder")
        source = self.weights
        pretrained = read_hub_or_folder(lambda name: autoencoder_kl().from_pretrained(name, local_files_only=offline()),
                                        source, what, how, allow_random, log)
        if pretrained is None:
            return
        copy_weights(self.vae, pretrained.state_dict(), source, "the sd_vae architecture")
        log.info("loaded SD VAE weights from %s", source)
