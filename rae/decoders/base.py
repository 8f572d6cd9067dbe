"""The decoder interface: latents (B, C, h, w) -> pixels in the encoder's normalised pixel space."""
from __future__ import annotations

import abc

import torch
from torch import nn


class Decoder(nn.Module, abc.ABC):
    """Trainable map from an encoder's latent grid back to pixels.

    The output is in the space the encoder's inputs were normalised to,
    ``(image - pixel_mean) / pixel_std``; the autoencoder maps it back to [0, 1].
    """

    in_channels: int
    token_grid: tuple[int, int]
    patch_size: int
    out_channels: int

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the decoded images: each latent position becomes a ``patch_size`` square."""
        return self.token_grid[0] * self.patch_size, self.token_grid[1] * self.patch_size

    @property
    @abc.abstractmethod
    def last_layer(self) -> nn.Parameter:
        """Weight of the layer that writes pixels (where GAN training compares gradient norms)."""

    def import_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A checkpoint's state dict in this decoder's key names (identity unless a release uses others)."""
        return state

    def check_latent(self, latent: torch.Tensor) -> None:
        """Fail clearly when a latent does not have this decoder's channels and grid."""
        expected = (self.in_channels, *self.token_grid)
        if latent.dim() != 4 or tuple(latent.shape[1:]) != expected:
            raise ValueError(
                f"{type(self).__name__} expects latents of shape (B, {expected[0]}, {expected[1]}, "
                f"{expected[2]}), got {tuple(latent.shape)}"
            )
