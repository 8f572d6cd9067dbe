"""The release's one-image and folder tools as experiments: `reconstruct_image` and `pack_images`.

``reconstruct_image`` is RAE's ``src/stage1_sample.py``: one image (a local or ``hf://`` path) through
the autoencoder's ``encode`` and ``decode`` to a reconstruction PNG. ``pack_images`` is RAE's
``pack_images.py``: every PNG/JPEG under a folder (recursively, sorted by path), ADM's centre crop to a
size, into one ADM-style ``.npz`` (``arr_0`` uint8 NHWC) for the ``eval`` experiment.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from rae.data.image_folder import center_crop, to_rgb
from rae.experiments.base import AutoencoderExperiment, Experiment, RunContext, check_positive
from rae.experiments.image_store import check_quantize, save_grid, to_uint8
from rae.hub import resolve
from rae.metrics.pixel import psnr
from rae.registry import EXPERIMENTS
from rae.io import UnreadableFile, atomic_write

PACK_EXTENSIONS = (".png", ".jpg", ".jpeg")  # pack_images.py's img_suffix, matched case-insensitively
# What PIL raises on files it cannot decode (as rae/data/image_folder.py lists them).
_UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def read_rgb(path: Path, field: str, resolution: int | None = None) -> Image.Image:
    """An 8-bit RGB image from ``path`` (`to_rgb`), ADM-centre-cropped to ``resolution`` when given;
    a missing or undecodable file is refused naming ``field`` and the file."""
    if not path.is_file():
        raise UnreadableFile(f"{field}: no such file {path}")
    try:
        with Image.open(path) as image:
            rgb = to_rgb(image)
    except _UNREADABLE as exc:
        raise UnreadableFile(f"{field}: {path} is not a readable image ({type(exc).__name__}: {exc})") from exc
    return rgb if resolution is None else center_crop(rgb, resolution)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) float in [0, 1] from an RGB image (torchvision's ``ToTensor``)."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255


@EXPERIMENTS.register("reconstruct_image")
class ReconstructImage(AutoencoderExperiment):
    """One image through ``autoencoder`` (eval mode, no latent noise) to a reconstruction PNG.

    As RAE's ``src/stage1_sample.py``: the whole image, as RGB in [0, 1], is encoded (the encoder
    resizes it to its input size, bicubic, so a non-square image is squeezed) and decoded at the
    decoder's size; the reconstruction is clamped to [0, 1] and stored as 8 bits. ``resolution``
    first takes ADM's centre crop of that size instead (the evaluation's preprocessing, which keeps
    the aspect ratio). When the image fed in has the reconstruction's size, the PSNR between the two
    (8-bit) is reported and both are saved side by side in ``comparison.png``.

    Args:
      autoencoder: ``encode`` (images in [0, 1]) and ``decode``; the RAE of a stage-1 config.
      image: the image file, a local path or ``hf://ORG/REPO/path``; PNG, JPEG or anything PIL reads.
      output: the reconstruction's file name in the run folder (an absolute path is used as it is).
      resolution: ADM centre crop to this size before encoding; None: the whole image, as released.
      quantize: floats to 8 bits: "round" to the nearest level (the release's torchvision
        ``save_image`` adds 0.5 and truncates: the same except at exact halves) or "truncate".
    """

    kind = "reconstruct_image"

    def __init__(
        self,
        autoencoder: nn.Module,
        image: str | os.PathLike,
        output: str = "recon.png",
        resolution: int | None = None,
        quantize: str = "round",
    ) -> None:
        check_positive("reconstruct_image", resolution=resolution)
        if not str(output).lower().endswith(".png"):
            raise ValueError(f"reconstruct_image.output = {output!r}: expected a .png file name")
        self.autoencoder = autoencoder
        self.image = image
        self.output = output
        self.resolution = resolution
        self.quantize = check_quantize(quantize, "reconstruct_image.quantize")

    def run(self, ctx: RunContext) -> dict[str, Any]:
        acc = ctx.accelerator
        if not acc.is_main:
            return {}  # one image: rank 0 alone
        path = resolve(self.image, "reconstruct_image.image")
        original = to_tensor(read_rgb(Path(path), "reconstruct_image.image", self.resolution))[None]
        autoencoder = self.autoencoder.to(acc.device).eval()
        with torch.inference_mode(), acc.autocast():
            latent = autoencoder.encode(original.to(acc.device))
            recon = autoencoder.decode(latent).float().cpu()
        pixels = to_uint8(recon, self.quantize)
        out = ctx.run_dir / self.output
        png = Image.fromarray(pixels[0].permute(1, 2, 0).numpy())
        atomic_write(out, lambda f: png.save(f, format="PNG"))
        summary: dict[str, Any] = {"reconstruction": str(out), "input_shape": tuple(original.shape),
                                   "latent_shape": tuple(latent.shape), "recon_shape": tuple(recon.shape)}
        ctx.log.info("reconstruct_image: %s -> %s; input %s, latent %s, reconstruction %s", self.image, out,
                     summary["input_shape"], summary["latent_shape"], summary["recon_shape"])
        if original.shape == recon.shape:
            reference = to_uint8(original, self.quantize)
            summary["psnr"] = float(psnr(pixels, reference, data_range=255.0)[0])
            pair = torch.cat([reference, pixels])
            summary["comparison"] = str(save_grid(pair, ctx.run_dir / "comparison.png", nrow=2))
            ctx.tracker.track("psnr", summary["psnr"], step=0)
            ctx.tracker.track_images("reconstruction", pair.float() / 255, step=0,
                                     captions=["original", "reconstruction"])
        else:
            ctx.tracker.track_images("reconstruction", pixels.float() / 255, step=0, captions=["reconstruction"])
        return summary


def find_pack_images(folder: Path, extensions: tuple[str, ...] = PACK_EXTENSIONS) -> list[Path]:
    """Every file under ``folder`` (recursively, links to folders not followed) whose name ends with one
    of ``extensions`` (any case), sorted by full path as RAE's pack_images.py sorts them."""
    found = [os.path.join(root, name) for root, _, names in os.walk(folder) for name in names
             if name.lower().endswith(extensions)]
    return [Path(p) for p in sorted(found)]


@EXPERIMENTS.register("pack_images")
class PackImages(Experiment):
    """A folder of images -> one ADM-style ``.npz`` (``arr_0``: uint8 (N, R, R, 3)), as RAE's ``pack_images.py``.

    Every PNG/JPEG under ``folder``, at any depth, sorted by path; each read as RGB (`to_rgb`: 16-bit
    and float images are scaled, where PIL's ``convert`` would clip them) and cut to ``resolution`` by
    ADM's centre crop (`center_crop`; an image of that size already is kept as it is, as released).
    The release packs at most its first 50,000 images (``max_images``; None: all). An undecodable
    file stops the run naming it (the count matters for FID). Rank 0 packs; other ranks have nothing
    to do.

    Args:
      folder: the images' root folder.
      resolution: the side of the square crop (pack_images.py's ``im_size``, default 256).
      output: the ``.npz`` file in the run folder (an absolute path is used as it is); None:
        ``<folder name>.npz``, the name the release gives it.
      max_images: the first ``max_images`` images in path order (the release's ``num=50_000``).
      extensions: the file endings packed, any case.
      log_every: images between progress logs.
    """

    kind = "pack_images"

    def __init__(
        self,
        folder: str | os.PathLike,
        resolution: int = 256,
        output: str | None = None,
        max_images: int | None = 50_000,
        extensions: tuple[str, ...] = PACK_EXTENSIONS,
        log_every: int = 5000,
    ) -> None:
        check_positive("pack_images", resolution=resolution, max_images=max_images, log_every=log_every)
        if output is not None and not str(output).endswith(".npz"):
            raise ValueError(f"pack_images.output = {output!r}: expected a .npz file name")
        if not extensions:
            raise ValueError("pack_images.extensions is empty: expected file endings such as '.png'")
        self.folder = folder
        self.resolution = resolution
        self.output = output
        self.max_images = max_images
        self.extensions = tuple(e.lower() for e in extensions)
        self.log_every = log_every

    def run(self, ctx: RunContext) -> dict[str, Any]:
        if not ctx.accelerator.is_main:
            return {}  # no barrier after: packing 50k images can outlast the collective timeout
        folder = Path(self.folder).expanduser()
        if not folder.is_dir():
            raise UnreadableFile(f"pack_images.folder: {folder} is not a folder")
        files = find_pack_images(folder, self.extensions)
        if not files:
            raise UnreadableFile(f"pack_images.folder: no {', '.join(self.extensions)} images under {folder}")
        count = len(files) if self.max_images is None else min(self.max_images, len(files))
        ctx.log.info("pack_images: %d images under %s, packing %d at %d px", len(files), folder, count,
                     self.resolution)
        images = np.empty((count, self.resolution, self.resolution, 3), dtype=np.uint8)
        start = time.time()
        for i, path in enumerate(files[:count]):
            images[i] = np.asarray(read_rgb(path, "pack_images.folder", self.resolution), dtype=np.uint8)
            if (i + 1) % self.log_every == 0 or i + 1 == count:
                ctx.log.info("pack_images: %d / %d images, %.1f images/s", i + 1, count,
                             (i + 1) / max(time.time() - start, 1e-9))
        out = ctx.run_dir / (self.output or f"{folder.resolve().name}.npz")
        atomic_write(out, lambda f: np.savez(f, arr_0=images))  # straight to the file: no second copy in memory
        ctx.tracker.track("images", count, step=0)
        return {"npz": str(out), "images": count, "found": len(files), "shape": images.shape}
