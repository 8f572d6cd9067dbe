"""`coco_features`: MS-COCO as REPA's text-to-image training reads it (U-ViT's feature layout).

The layout (U-ViT's ``scripts/extract_mscoco_feature.py`` and ``extract_empty_feature.py``; REPA's
``dataset.py``, ``MSCOCO256Features``), under ``root``:
  ``empty_context.npy``      the empty caption's CLIP text features (77, 768): the null condition;
  ``<split>/{i}.npy``         image i's SD-VAE moments (8, 32, 32) at 256 px, float32: the posterior's
                              mean and log-variance, 4 channels each (``quant_conv`` output);
  ``<split>/{i}_{k}.npy``     the k-th caption of image i, CLIP text features (77, 768), float32;
  ``<split>/{i}.png``         image i's 256-px crop, which REPA's ``MSCOCOFeatureDataset`` reads for
                              its alignment targets (U-ViT's scripts do not write it);
  ``<split>/captions.json``   the caption strings, ``{"captions": [[str, ...], ...]}`` (ours, for grids
                              and Aim; without it captions are named by their files).
Images are numbered 0..n-1 in the order of their COCO image ids (U-ViT's ``sorted(coco.imgs)``).

An item is ``(latent, context, image)``: the latent a fresh draw from the moments, (mean + std * eps)
* 0.18215 with log-variance clamped to [-30, 20] (REPA's ``train_t2i.py`` ``sample_posterior``), and
one of the image's captions drawn uniformly (REPA: ``random.randint``); both draws come from torch's
global generator, which training checkpoints restore. REPA's caption dropout (``CFGDataset``,
``p_uncond`` 0.1) is not applied here: stage 2 applies ``p_uncond`` with its per-batch draws
(`rae.conditions.BatchContextDropout`). Nothing is read until first use, so configs dry-run offline.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from rae.conditions import CONTEXT
from rae.registry import DATASETS
from rae.vae.sd_vae import REPA_LATENT_SCALE, sample_posterior

EMPTY_CONTEXT_FILE = "empty_context.npy"
CAPTIONS_FILE = "captions.json"
_MOMENTS = re.compile(r"^(\d+)\.npy$")
_CONTEXT = re.compile(r"^(\d+)_(\d+)\.npy$")
LOGVAR_RANGE = (-30.0, 20.0)  # the clamp of REPA's sample_posterior (and of diffusers' posterior)


def moments_file(folder: Path, index: int) -> Path:
    return folder / f"{index}.npy"


def context_file(folder: Path, index: int, k: int) -> Path:
    return folder / f"{index}_{k}.npy"


def image_file(folder: Path, index: int) -> Path:
    return folder / f"{index}.png"


def scan_split(folder: Path) -> list[int]:
    """Captions per image of a split folder; refuses gaps in the numbering, naming the first missing file."""
    if not folder.is_dir():
        raise FileNotFoundError(f"coco_features: {folder} is not a folder; expected U-ViT's feature layout "
                                "(<root>/<split>/{i}.npy, {i}_{k}.npy; make it with experiments/preprocess_coco.gin)")
    images, captions = set(), {}
    for name in (p.name for p in folder.iterdir()):
        if m := _MOMENTS.match(name):
            images.add(int(m.group(1)))
        elif m := _CONTEXT.match(name):
            captions.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if not images:
        raise ValueError(f"coco_features: {folder} holds no image moments ({{i}}.npy)")
    counts = []
    for i in range(len(images)):
        if i not in images:
            raise ValueError(f"coco_features: {moments_file(folder, i)} is missing ({len(images)} images found, "
                             "numbered from 0); an interrupted preprocess_t2i run finishes when rerun")
        ks = captions.get(i, set())
        if not ks or ks != set(range(len(ks))):
            missing = min(set(range(len(ks) + 1)) - ks)
            raise ValueError(f"coco_features: {context_file(folder, i, missing)} is missing (image {i} has "
                             f"captions {sorted(ks)}); every image needs captions numbered from 0")
        counts.append(len(ks))
    return counts


def load_npy(path: Path, what: str) -> torch.Tensor:
    """A float32 tensor from a ``.npy`` file, or an error naming the file and what it should hold."""
    try:
        return torch.from_numpy(np.load(path).astype(np.float32, copy=False))
    except FileNotFoundError:
        raise FileNotFoundError(f"coco_features: {path} is missing; expected {what}") from None
    except ValueError as exc:
        raise ValueError(f"coco_features: cannot read {path} as {what} (.npy): {exc}") from None


@DATASETS.register("coco_features")
class CocoFeatures(torch.utils.data.Dataset):
    """Items ``(latent (4, h, w), context (L, D), image (3, R, R) in [0, 1])`` of one split of the layout above.

    ``images``: also read the ``{i}.png`` crops (REPA's alignment targets see them); without them an
    item is ``(latent, context)``. ``p_uncond``: REPA's caption dropout, applied by stage 2.
    ``scaling_factor``, ``latent_bias``: the SD-VAE latent scaling (REPA: 0.18215 and 0).
    """

    condition = CONTEXT

    def __init__(self, root: str, split: str = "train", images: bool = True, p_uncond: float = 0.1,
                 scaling_factor: float = REPA_LATENT_SCALE, latent_bias: float = 0.0) -> None:
        if not 0 <= p_uncond < 1:
            raise ValueError(f"coco_features.p_uncond must be in [0, 1), got {p_uncond}")
        self.root = Path(root).expanduser()
        self.split = split
        self.folder = self.root / split
        self.yields_images = images
        self.p_uncond = p_uncond
        self.scaling_factor = scaling_factor
        self.latent_bias = latent_bias
        self._counts: list[int] | None = None
        self._captions: list[list[str]] | None = None
        self._empty: torch.Tensor | None = None

    def prepare(self) -> list[int]:
        """Scan the split folder once: captions per image (every file checked to exist, none read)."""
        if self._counts is None:
            self._counts = scan_split(self.folder)
            path = self.folder / CAPTIONS_FILE
            if path.is_file():
                captions = json.loads(path.read_text())["captions"]
                if len(captions) != len(self._counts):
                    raise ValueError(f"coco_features: {self.folder} holds {len(self._counts)} of the {len(captions)} "
                                     f"images its {CAPTIONS_FILE} lists: the preprocess_t2i run that writes it is "
                                     "unfinished; rerun it")
                if [len(c) for c in captions] != self._counts:
                    raise ValueError(f"coco_features: {path} lists captions that do not match the {{i}}_{{k}}.npy "
                                     f"files of {self.folder}; rerun preprocess_t2i")
                self._captions = captions
        return self._counts

    def __len__(self) -> int:
        return len(self.prepare())

    def num_captions(self, index: int) -> int:
        return self.prepare()[index]

    def caption(self, index: int, k: int) -> str:
        """The caption text (from ``captions.json``), else the name of its feature file."""
        self.prepare()
        return self._captions[index][k] if self._captions is not None else f"{self.split}/{index}_{k}"

    def context(self, index: int, k: int) -> torch.Tensor:
        return load_npy(context_file(self.folder, index, k), "a caption's CLIP text features (L, D)")

    def moments(self, index: int) -> torch.Tensor:
        return load_npy(moments_file(self.folder, index), "an image's SD-VAE moments (2 x C, h, w)")

    def image(self, index: int) -> torch.Tensor:
        """Image ``index``'s stored crop, (3, R, R) in [0, 1]."""
        path = image_file(self.folder, index)
        if not path.is_file():
            raise FileNotFoundError(f"coco_features: {path} is missing; REPA's alignment needs the {{i}}.png crops "
                                    "(preprocess_t2i writes them), or set coco_features.images = False")
        with Image.open(path) as png:
            pixels = torch.from_numpy(np.asarray(png.convert("RGB"), dtype=np.uint8).copy())
        return pixels.permute(2, 0, 1).float() / 255.0

    @property
    def empty_context(self) -> torch.Tensor:
        """The empty caption's context (L, D), the null condition of guidance and of caption dropout."""
        if self._empty is None:
            self._empty = load_npy(self.root / EMPTY_CONTEXT_FILE, "the empty caption's CLIP text features (L, D)")
        return self._empty

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        channels, h, w = self.moments(0).shape
        return channels // 2, h, w

    @property
    def resolution(self) -> int:
        return self.image(0).shape[-1]

    def latent(self, moments: torch.Tensor) -> torch.Tensor:
        """A draw from the posterior the moments describe, scaled (REPA's ``sample_posterior``)."""
        mean, logvar = moments.chunk(2, dim=0)
        std = torch.exp(0.5 * logvar.clamp(*LOGVAR_RANGE))
        return sample_posterior(mean, std, self.scaling_factor, self.latent_bias)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        counts = self.prepare()
        if not 0 <= index < len(counts):
            raise IndexError(f"coco_features: index {index} out of range for {len(counts)} images")
        latent = self.latent(self.moments(index))
        context = self.context(index, int(torch.randint(counts[index], ())))
        return (latent, context, self.image(index)) if self.yields_images else (latent, context)

    def check_autoencoder(self, autoencoder: nn.Module) -> None:
        """Refuse a decoding autoencoder whose latent scaling is not the one these latents were drawn with."""
        ours = (self.scaling_factor, self.latent_bias)
        theirs = (getattr(autoencoder, "scaling_factor", None), getattr(autoencoder, "latent_bias", None))
        if theirs != ours:
            raise ValueError(f"coco_features draws latents scaled by (scaling_factor, latent_bias) = {ours}, but the "
                             f"autoencoder {type(autoencoder).__name__} decodes {theirs}: use the SD-VAE "
                             "(@autoencoder.sd_vae()) with the same scaling")


@DATASETS.register("coco_images")
class CocoImages(torch.utils.data.Dataset):
    """The ``{i}.png`` crops of a `coco_features` split as ``(image, 0)``: the reference images of FID
    (e.g. ``eval.reference``: COCO val at 256 px, the crops the features were made from)."""

    num_classes = 1

    def __init__(self, root: str, split: str = "val") -> None:
        self.features = CocoFeatures(root, split)

    def __len__(self) -> int:
        return len(self.features)

    @property
    def resolution(self) -> int:
        return self.features.resolution

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.features.image(index), 0
