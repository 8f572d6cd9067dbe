"""Generated or reconstructed images stored by index, one PNG each, so a long run resumes where it stopped.

Each image is ``{index:06d}.png``, written atomically (temporary file + rename), so a PNG that
exists is complete. Its class label lives in the PNG's own ``label`` text chunk: image and label
are one file, written in one rename, and survive restarts together. ``pack_npz`` gathers them into
the ADM evaluation format (``arr_0`` uint8 NHWC, ``arr_1`` int64 labels).

Floats become 8 bits as both releases store them: clamped to [0, 1], times 255, truncated
(RAE's ``src/sample_ddp.py`` and ``src/stage1_sample_ddp.py``: ``clamp(0, 1).mul(255).to(uint8)``;
REPA's ``generate.py``: ``clamp(255 * x, 0, 255).to(uint8)``). ``quantize="round"`` rounds to the
nearest level instead (ADM's own samplers; on average half a level brighter than truncation).
"""
from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from rae.io import atomic_write

_NAME = re.compile(r"^(\d{6,})\.png$")
_LABEL_KEY = "label"
QUANTIZE = ("truncate", "round")


def check_quantize(quantize: str, field: str = "quantize") -> str:
    """``quantize`` if it names a rule of `to_uint8`, else a ValueError naming ``field``."""
    if quantize not in QUANTIZE:
        raise ValueError(f"{field} must be one of {QUANTIZE}, got {quantize!r}")
    return quantize


def to_uint8(images: torch.Tensor, quantize: str = "truncate") -> torch.Tensor:
    """(B,3,H,W) floats in [0,1] -> uint8: clamp, times 255, then truncate (the releases) or round; uint8 passes."""
    check_quantize(quantize)
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise TypeError(f"images must be float in [0,1] or uint8, got {images.dtype}")
    scaled = images.detach().float().clamp(0, 1) * 255
    return (scaled.round() if quantize == "round" else scaled).to(torch.uint8)


def chw_tensor(image: np.ndarray) -> torch.Tensor:
    """A stored (H, W, 3) uint8 image (read-only) as a (3, H, W) tensor of its own."""
    return torch.from_numpy(image.copy()).permute(2, 0, 1)


def _hwc(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).contiguous().cpu().numpy()


class ImageStore:
    """Images by index as PNGs under ``folder`` (``{index:06d}.png``) plus their labels; resumable.

    Float images are stored as `to_uint8` makes them with ``quantize`` ("truncate", the releases; or "round").
    """

    def __init__(self, folder: str | Path, quantize: str = "truncate") -> None:
        self.folder = Path(folder)
        self.quantize = check_quantize(quantize)

    def path(self, index: int) -> Path:
        return self.folder / f"{index:06d}.png"

    def done(self) -> set[int]:
        """Indices whose PNG exists (complete, since PNGs only appear by atomic rename)."""
        if not self.folder.is_dir():
            return set()
        return {int(m.group(1)) for p in self.folder.iterdir() if (m := _NAME.match(p.name))}

    def write(self, indices: Sequence[int], images: torch.Tensor, labels: Sequence[int] | torch.Tensor) -> None:
        """Write ``images[k]`` (float [0,1] or uint8, (B,3,H,W)) with ``labels[k]`` as index ``indices[k]``."""
        labels = [int(v) for v in (labels.tolist() if isinstance(labels, torch.Tensor) else labels)]
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B,3,H,W), got {tuple(images.shape)}")
        if not len(indices) == len(labels) == images.shape[0]:
            raise ValueError(f"{len(indices)} indices, {len(labels)} labels, {images.shape[0]} images: must match")
        pixels = to_uint8(images, self.quantize)
        for index, image, label in zip(indices, pixels, labels):
            info = PngInfo()
            info.add_text(_LABEL_KEY, str(label))
            png = Image.fromarray(_hwc(image))
            atomic_write(self.path(int(index)), lambda f, png=png, info=info: png.save(f, format="PNG", pnginfo=info))

    def read(self, index: int) -> tuple[np.ndarray, int]:
        """The image (H,W,3 uint8) and label stored at ``index``."""
        with Image.open(self.path(index)) as png:
            return np.asarray(png.convert("RGB")), int(png.text[_LABEL_KEY])

    def pack_npz(self, path: str | Path, count: int) -> Path:
        """ADM-style ``.npz`` of indices ``0..count-1`` in order (``arr_0`` uint8 NHWC, ``arr_1`` int64), atomic."""
        missing = sorted(set(range(count)) - self.done())
        if missing:
            shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
            raise FileNotFoundError(f"{len(missing)} of {count} images missing in {self.folder}: {shown}")
        first, _ = self.read(0) if count else (np.zeros((0, 0, 3), np.uint8), 0)
        images = np.empty((count, *first.shape), dtype=np.uint8)
        labels = np.empty((count,), dtype=np.int64)
        for i in range(count):
            image, labels[i] = self.read(i)
            if image.shape != first.shape:
                raise ValueError(f"{self.path(i)} is {image.shape}, index 0 is {first.shape}: sizes differ")
            images[i] = image
        buffer = io.BytesIO()
        np.savez(buffer, arr_0=images, arr_1=labels)
        return atomic_write(Path(path), lambda f: f.write(buffer.getbuffer()))


def save_grid(images: torch.Tensor, path: str | Path, nrow: int, quantize: str = "truncate") -> Path:
    """A PNG grid of (B,3,H,W) images (float [0,1] or uint8), ``nrow`` per row, 2-pixel white gaps; atomic."""
    pixels = to_uint8(images, quantize)
    b, _, h, w = pixels.shape
    rows, pad = -(-b // nrow), 2
    grid = torch.full((3, rows * (h + pad) + pad, nrow * (w + pad) + pad), 255, dtype=torch.uint8)
    for k, image in enumerate(pixels):
        top, left = pad + (k // nrow) * (h + pad), pad + (k % nrow) * (w + pad)
        grid[:, top:top + h, left:left + w] = image
    png = Image.fromarray(_hwc(grid))
    return atomic_write(Path(path), lambda f: png.save(f, format="PNG"))
