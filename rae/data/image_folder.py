"""An ImageNet-style folder tree (``root/<class>/<image>``) with ADM's center crop (or another crop)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from rae.registry import DATASETS

log = logging.getLogger(__name__)

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# What PIL raises on unreadable files: OSError (truncated, unidentified), SyntaxError (broken
# PNG chunks), ValueError and DecompressionBombError (absurd sizes).
_UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
# Modes whose pixels are not 8-bit, with the value that means full intensity. 16-bit PNG and TIFF
# files open as "I;16*" (or "I" in older Pillow): 0..65535; float images ("F") are taken as 0..1.
# PIL's own convert("RGB") clips them at 255 instead of scaling, so nearly every pixel turns white.
FULL_SCALE = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB image from one in any PIL mode, high bit depths scaled (`FULL_SCALE`), not clipped."""
    full = FULL_SCALE.get(image.mode)
    if full is not None:
        values = np.asarray(image, dtype=np.float64) * (255.0 / full)
        image = Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8))
    elif image.mode == "La":  # premultiplied alpha: PIL converts it to RGB only by way of LA
        image = image.convert("LA")
    return image.convert("RGB")


def center_crop(image: Image.Image, resolution: int) -> Image.Image:
    """ADM's crop (as RAE and REPA): halve with BOX while the short side is >= 2x the target,
    resize the short side to ``resolution`` (BICUBIC), then take the central square."""
    while min(image.size) >= 2 * resolution:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.Resampling.BOX)
    scale = resolution / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.Resampling.BICUBIC)
    left, top = (image.size[0] - resolution) // 2, (image.size[1] - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def find_images(root: Path) -> tuple[list[str], list[str], list[int]]:
    """Sorted class folder names, image paths relative to ``root``, and labels (sorted-class order)."""
    if not root.is_dir():
        raise FileNotFoundError(f"image_folder: {root} is not a folder; expected an ImageNet-style tree "
                                "root/<class>/<image>.jpg")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    files, labels = [], []
    for label, name in enumerate(classes):
        for folder, subfolders, names in os.walk(root / name, followlinks=True):
            subfolders.sort()
            found = [os.path.relpath(os.path.join(folder, f), root) for f in sorted(names)
                     if f.lower().endswith(EXTENSIONS)]
            files += found
            labels += [label] * len(found)
    if not files:
        raise ValueError(f"image_folder: no images under {root} (found {len(classes)} class folders); "
                         f"expected root/<class>/<image> with one of {', '.join(EXTENSIONS)}")
    return classes, files, labels


@DATASETS.register("image_folder")
class ImageFolder(torch.utils.data.Dataset):
    """Class-labelled images from ``root/<class>/...``, center-cropped to ``resolution``.

    ``crop`` (image, resolution) -> ``resolution`` square replaces ADM's center crop, e.g.
    ``@dataset.resize_random_crop()`` (RAE stage 1's training data).

    An unreadable image is never fatal: it is logged once, marked, and the next readable
    image stands in for it. ``skipped`` counts the distinct unreadable files found so far,
    across DataLoader workers (the marks live in shared memory). The folder is scanned on
    first use, not when the dataset is built, so a ``--dry_run`` needs no data on disk.
    """

    def __init__(self, root: str, resolution: int = 256, random_flip: bool = False,
                 crop: Callable[[Image.Image, int], Image.Image] | None = None) -> None:
        if resolution <= 0:
            raise ValueError(f"image_folder: resolution must be positive, got {resolution}")
        self.root = Path(root).expanduser()
        self.resolution = resolution
        self.random_flip = random_flip
        self.crop = center_crop if crop is None else crop
        self._index: tuple[list[str], np.ndarray, np.ndarray, torch.Tensor] | None = None

    def _scanned(self) -> tuple[list[str], np.ndarray, np.ndarray, torch.Tensor]:
        """Class names, file paths, labels and unreadable marks, from one scan of the folder."""
        if self._index is None:
            classes, files, labels = find_images(self.root)
            # Flat arrays, not a list of Python objects: forked DataLoader workers would copy
            # a 1.3M-entry list page by page as reference counts change.
            self._index = (
                classes,
                np.array([os.fsencode(f) for f in files], dtype=np.bytes_),
                np.array(labels, dtype=np.int64),
                torch.zeros(len(files), dtype=torch.bool).share_memory_(),
            )
        return self._index

    @property
    def classes(self) -> list[str]:
        return self._scanned()[0]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def _files(self) -> np.ndarray:
        return self._scanned()[1]

    @property
    def labels(self) -> np.ndarray:
        return self._scanned()[2]

    @property
    def _unreadable(self) -> torch.Tensor:
        return self._scanned()[3]

    @property
    def skipped(self) -> int:
        """How many distinct files turned out unreadable (and were replaced by the next one)."""
        return int(self._unreadable.sum())

    def __len__(self) -> int:
        return len(self._files)

    def path(self, index: int) -> Path:
        """The file of image ``index``."""
        return self.root / os.fsdecode(self._files[index])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        n = len(self._files)
        for offset in range(n):
            i = (index + offset) % n
            if self._unreadable[i]:
                continue
            image = self._load(i)
            if image is not None:
                return self._to_tensor(image), int(self.labels[i])
        raise RuntimeError(f"image_folder: none of the {n} images under {self.root} is readable")

    def _load(self, i: int) -> Image.Image | None:
        path = self.path(i)
        try:
            with Image.open(path) as image:
                return self.crop(to_rgb(image), self.resolution)
        except _UNREADABLE as exc:
            self._unreadable[i] = True
            log.warning("image_folder: skipping unreadable image %s (%s: %s)", path, type(exc).__name__, exc)
            return None

    def _to_tensor(self, image: Image.Image) -> torch.Tensor:
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
        if self.random_flip and torch.rand(()) < 0.5:
            pixels = pixels.flip(-1)
        return pixels.float() / 255.0
