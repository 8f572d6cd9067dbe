"""The representation autoencoder of the RAE paper: frozen encoder, trainable decoder.

Ranges: ``encode`` takes images in [0, 1] (any size; the encoder resizes) and returns latents
(B, C, h, w), normalised by the stats (per channel and position) when a stats file is given, raw otherwise.
``decode`` takes such latents and returns images on the [0, 1] scale, not clamped.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from rae.autoencoder.stats import read_latent_stats
from rae.decoders.base import Decoder
from rae.decoders.checkpoint import read_decoder_state
from rae.encoders.base import Encoder
from rae.encoders.tokens import tokens_to_latent
from rae.hub import resolve
from rae.registry import AUTOENCODERS
from rae.weights import Pretrained, load_checked, missing_weights

RELEASE_HINT = (
    "RAE's released files are on the Hugging Face hub, repo nyu-visionx/RAE-collections "
    "(e.g. decoders/dinov2/wReg_base/ViTXL_n08/model.pt, stats/dinov2/wReg_base/imagenet1k/stat.pt)"
)


@AUTOENCODERS.register("rae")
class RAE(nn.Module, Pretrained):
    """encoder -> tokens -> latent grid (+ noise while training) -> normalise ; denormalise -> decoder.

    ``decoder`` is a factory called with ``in_channels`` and ``token_grid`` of the encoder (gin:
    ``@decoder.vit``), or a built `Decoder` that must already fit the encoder. ``stats_path``
    (a ``stat.pt`` in any published layout, see `rae.autoencoder.stats`) and ``decoder_path``
    (a decoder or stage-1 training checkpoint, ours or the release's, see
    `rae.decoders.checkpoint`) are read by ``load_pretrained``, never at construction; both also
    take ``hf://ORG/REPO/path[@revision]`` hub paths.
    """

    def __init__(
        self,
        encoder: Encoder,
        decoder: Callable[..., Decoder] | Decoder,
        noise_tau: float = 0.8,
        stats_path: str | None = None,
        decoder_path: str | None = None,
        stats_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if noise_tau < 0:
            raise ValueError(f"noise_tau must be >= 0, got {noise_tau}")
        self.encoder = encoder
        self.decoder = decoder if isinstance(decoder, Decoder) else decoder(
            in_channels=encoder.hidden_size, token_grid=encoder.token_grid
        )
        decoder_shape = (self.decoder.in_channels, *self.decoder.token_grid)
        if decoder_shape != self.latent_shape:
            raise ValueError(f"decoder takes latents {decoder_shape} but the encoder makes {self.latent_shape}")
        self.noise_tau = noise_tau
        self.stats_path = stats_path
        self.decoder_path = decoder_path
        self.stats_eps = stats_eps
        if stats_path is not None:  # (1, C, h, w): per position, whatever layout the file has (rae.autoencoder.stats)
            self.register_buffer("latent_mean", torch.zeros(1, *self.latent_shape))
            self.register_buffer("latent_var", torch.ones(1, *self.latent_shape))

    # ---- shapes ----
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the latents: the encoder's width and token grid."""
        return (self.encoder.hidden_size, *self.encoder.token_grid)

    @property
    def normalizes(self) -> bool:
        """Whether latents are normalised by stats (only when a stats file was given)."""
        return self.stats_path is not None

    # ---- pixels -> latents ----
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (B, 3, H, W) -> latents (B, C, h, w); noised in train mode (noise-augmented
        decoding: the decoder learns to decode the imperfect latents a diffusion model samples)."""
        z = tokens_to_latent(self.encoder(images), self.encoder.token_grid)
        if self.training and self.noise_tau > 0:
            z = self.add_noise(z)
        return self.normalize(z)

    def add_noise(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """z + sigma * eps, with one sigma ~ U(0, noise_tau) per sample and eps ~ N(0, I)."""
        shape = (z.shape[0],) + (1,) * (z.dim() - 1)
        uniform = torch.rand(shape, generator=generator, device=z.device, dtype=z.dtype)
        return self.noised(z, uniform, torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype))

    def noised(self, z: torch.Tensor, uniform: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
        """`add_noise` from given draws: sigma = noise_tau * uniform (B, 1, 1, 1), eps = normal (like z)."""
        return z + self.noise_tau * uniform * normal

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """(z - mean) / sqrt(var + eps) per channel and position; the identity without stats."""
        if not self.normalizes:
            return z
        return (z - self.latent_mean) / torch.sqrt(self.latent_var + self.stats_eps)

    # ---- latents -> pixels ----
    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """The inverse of `normalize`."""
        if not self.normalizes:
            return z
        return z * torch.sqrt(self.latent_var + self.stats_eps) + self.latent_mean

    def decode(self, z: torch.Tensor, decoder: nn.Module | None = None) -> torch.Tensor:
        """Latents (B, C, h, w) -> images (B, 3, h*p, w*p) on the [0, 1] scale, not clamped.

        The decoder predicts pixels normalised like the encoder's inputs; they are mapped back here.
        ``decoder`` replaces ``self.decoder`` (stage 1: its DDP wrapper or its EMA copy).
        """
        pixels = (self.decoder if decoder is None else decoder)(self.denormalize(z))
        mean = pixels.new_tensor(self.encoder.pixel_mean).view(1, -1, 1, 1)
        std = pixels.new_tensor(self.encoder.pixel_std).view(1, -1, 1, 1)
        return pixels * std + mean

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstruction of ``images`` (both on the [0, 1] scale)."""
        return self.decode(self.encode(images))

    # ---- released / trained weights ----
    def load_pretrained(self, allow_random: bool, log: logging.Logger) -> None:
        """Read the latent stats and the decoder checkpoint; the encoder loads its own weights."""
        if self.stats_path is not None:
            self._load_stats(resolve(self.stats_path, "the RAE latent stats"), allow_random, log)
        if self.decoder_path is None:
            log.info("RAE decoder: no decoder_path, starting from its initialisation")
            return
        path = resolve(self.decoder_path, "the RAE decoder")
        if not path.is_file():
            missing_weights("the RAE decoder", str(path), f"Pass decoder_path = a decoder checkpoint; {RELEASE_HINT}.",
                            allow_random, log)
            return
        state = self.decoder.import_state_dict(read_decoder_state(path))
        load_checked(self.decoder, state, "RAE decoder", path)
        log.info("RAE decoder: loaded %s", path)

    def _load_stats(self, path: Path, allow_random: bool, log: logging.Logger) -> None:
        if not path.is_file():
            missing_weights("the RAE latent stats", str(path),
                            f"Pass stats_path = a stat.pt (the latent_stats experiment writes one); {RELEASE_HINT}.",
                            allow_random, log)
            return
        mean, var = read_latent_stats(path, self.latent_shape)
        self.latent_mean.copy_(mean)
        self.latent_var.copy_(var)
        log.info("RAE latent stats: loaded %s", path)
