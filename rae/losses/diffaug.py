"""Differentiable augmentation (DiffAugment, Zhao et al. 2020) for the discriminator's inputs.

As RAE (after StyleGAN-T's ``diffaug.py``): translation, then color, then cutout, each policy
switched on for the whole batch with probability ``prob``, its parameters drawn per sample.
RAE augments images in [-1, 1]; we take [0, 1] images and work in [-1, 1] inside, so padding
and cutout fill with mid-gray and brightness moves by up to +-0.5 there, exactly as released.
"""
from __future__ import annotations

import torch
from torch import nn

from rae.registry import LOSSES


@LOSSES.register("diffaug")
class DiffAugment(nn.Module):
    """Images (B, C, H, W) in [0, 1] -> augmented images, same shape; differentiable in the input.

    ``translation`` and ``cutout`` are fractions of the image side (0 switches a policy off);
    RAE's stage 1 uses prob 1.0, translation 0.125, color on, cutout 0.
    """

    def __init__(self, prob: float = 1.0, translation: float = 0.125, color: bool = True,
                 cutout: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= prob <= 1.0 or not 0.0 <= translation < 1.0 or not 0.0 <= cutout <= 1.0:
            raise ValueError(
                f"DiffAugment needs prob in [0, 1], translation in [0, 1) and cutout in [0, 1]; got "
                f"prob={prob}, translation={translation}, cutout={cutout}"
            )
        self.prob = prob
        self.translation = translation
        self.color = color
        self.cutout = cutout

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augmented copy of ``images``; ``generator`` (optional) makes the draws reproducible."""
        if self.prob == 0.0:
            return images
        draw_on = generator.device if generator is not None else torch.device("cpu")
        use = (torch.rand(3, generator=generator, device=draw_on) < self.prob).tolist()
        r = torch.rand(7, images.shape[0], 1, 1, generator=generator, device=draw_on).to(images.device)
        x = images.float() * 2.0 - 1.0
        if use[0] and self.translation > 0:
            x = translate(x, self.translation, r[0], r[1])
        if use[1] and self.color:
            x = color(x, r[2], r[3], r[4])
        if use[2] and self.cutout > 0:
            x = cutout(x, self.cutout, r[5], r[6])
        return ((x + 1.0) / 2.0).to(images.dtype)


def translate(x: torch.Tensor, ratio: float, r_rows: torch.Tensor, r_cols: torch.Tensor) -> torch.Tensor:
    """Shift each sample by integers in [-round(H*ratio), round(H*ratio)] (and W); vacated pixels are 0."""
    b, c, h, w = x.shape
    shift_rows = _uniform_int(r_rows, round(h * ratio))
    shift_cols = _uniform_int(r_cols, round(w * ratio))
    src_rows = torch.arange(h, device=x.device).view(1, h, 1) + shift_rows
    src_cols = torch.arange(w, device=x.device).view(1, 1, w) + shift_cols
    inside = (src_rows >= 0) & (src_rows < h) & (src_cols >= 0) & (src_cols < w)
    index = (src_rows.clamp(0, h - 1) * w + src_cols.clamp(0, w - 1)).reshape(b, 1, h * w)
    moved = x.reshape(b, c, h * w).gather(2, index.expand(b, c, h * w)).view(b, c, h, w)
    return moved * inside.unsqueeze(1)


def color(x: torch.Tensor, r_brightness: torch.Tensor, r_saturation: torch.Tensor,
          r_contrast: torch.Tensor) -> torch.Tensor:
    """Brightness + U(-0.5, 0.5), saturation x U(0, 2) around the pixel mean, contrast x U(0.5, 1.5)."""
    x = x + (r_brightness - 0.5).unsqueeze(-1)
    pixel_mean = x.mean(dim=1, keepdim=True)
    x = (x - pixel_mean) * (2.0 * r_saturation).unsqueeze(-1) + pixel_mean
    image_mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - image_mean) * (r_contrast + 0.5).unsqueeze(-1) + image_mean


def cutout(x: torch.Tensor, ratio: float, r_rows: torch.Tensor, r_cols: torch.Tensor) -> torch.Tensor:
    """Zero one round(H*ratio) x round(W*ratio) rectangle per sample, its centre uniform (clipped at borders)."""
    _, _, h, w = x.shape
    size_h, size_w = round(h * ratio), round(w * ratio)
    top = (r_rows * (h + 1 - size_h % 2)).floor().long() - size_h // 2
    left = (r_cols * (w + 1 - size_w % 2)).floor().long() - size_w // 2
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    hole = (rows >= top) & (rows < top + size_h) & (cols >= left) & (cols < left + size_w)
    return x * (~hole).unsqueeze(1)


def _uniform_int(r: torch.Tensor, bound: int) -> torch.Tensor:
    """U(0, 1) draws (B, 1, 1) -> integers uniform in [-bound, bound]."""
    return (r * (2 * bound + 1)).floor().long() - bound
