"""Per-image pixel fidelity of reconstructions: PSNR and SSIM (Wang et al. 2004), in float64.

Both take two (B, C, H, W) batches on the same scale (``data_range`` is its span: 1.0 for [0, 1],
255 for uint8 values) and return one value per image, so a mean over a dataset is a mean of
per-image scores, as RAE and the SSIM paper report them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

WINDOW_SIZE = 11
WINDOW_SIGMA = 1.5
K1, K2 = 0.01, 0.03


def _check(a: torch.Tensor, b: torch.Tensor, name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name}: images differ in shape, {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.ndim != 4:
        raise ValueError(f"{name}: expected (B, C, H, W) images, got shape {tuple(a.shape)}")


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, (B,) in dB: 10 log10(range^2 / MSE); inf for equal images."""
    _check(a, b, "psnr")
    mse = (a.double() - b.double()).square().mean(dim=(1, 2, 3))
    return 10 * torch.log10(data_range**2 / mse)


def gaussian_window(size: int = WINDOW_SIZE, sigma: float = WINDOW_SIGMA) -> torch.Tensor:
    """The normalised 1-D gaussian taps (size,) in float64; SSIM filters rows, then columns, with it."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    taps = torch.exp(-x.square() / (2 * sigma**2))
    return taps / taps.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity per image, (B,): the SSIM map of each channel (gaussian window 11x11,
    sigma 1.5, K1 0.01, K2 0.03; 'valid' filtering, no border), averaged over channels and pixels.

    Population (not sample) covariances, as in Wang et al. and pytorch-msssim; scikit-image matches
    with ``gaussian_weights=True, use_sample_covariance=False``.
    """
    _check(a, b, "ssim")
    if min(a.shape[-2:]) < WINDOW_SIZE:
        raise ValueError(f"ssim: images of {a.shape[-2]}x{a.shape[-1]} px are smaller than the "
                         f"{WINDOW_SIZE}x{WINDOW_SIZE} window")
    x, y = a.double(), b.double()
    channels = x.shape[1]
    taps = gaussian_window().to(x.device)
    rows = taps.view(1, 1, 1, -1).expand(5 * channels, 1, 1, WINDOW_SIZE)
    cols = taps.view(1, 1, -1, 1).expand(5 * channels, 1, WINDOW_SIZE, 1)
    # The five local moments of every channel in one grouped, separable 'valid' filtering.
    stacked = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    filtered = F.conv2d(F.conv2d(stacked, rows, groups=5 * channels), cols, groups=5 * channels)
    mu_x, mu_y, xx, yy, xy = filtered.split(channels, dim=1)
    var_x, var_y, cov = xx - mu_x.square(), yy - mu_y.square(), xy - mu_x * mu_y
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    # Eq. (13) of Wang et al. 2004: luminance x contrast-structure, per pixel.
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2, 3))
