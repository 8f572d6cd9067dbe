"""`preprocess_t2i`: images and a COCO ``captions_*.json`` -> U-ViT's feature layout (`rae.data.coco_features`).

As U-ViT's ``scripts/extract_mscoco_feature.py`` (which REPA's README points to) makes it: images in
the order of their COCO ids; each cropped to its central square and resized to ``resolution`` with
Lanczos (U-ViT's ``center_crop``), then encoded by the SD-VAE into moments (mean and log-variance,
``{i}.npy``); each of its captions (in the file's order) encoded by the CLIP text tower into
(77, 768) features (``{i}_{k}.npy``); the empty caption into ``empty_context.npy``. Both in fp32.
Also written: the crop as ``{i}.png`` (REPA's dataset reads it for the alignment targets) and
the caption strings (``captions.json``).

Resumable and sharded over ranks like `cache_latents`: items are cut into shards of ``shard_size``,
shard k written by rank ``k % world_size``; every file is written atomically and an item's moments
last, so an item whose moments exist is complete and a rerun does only the others. The root's
``preprocess_t2i.json`` records the resolution and fingerprints of both encoders; a rerun with
other ones is refused.
"""
from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from rae.data.coco_features import (
    CAPTIONS_FILE, EMPTY_CONTEXT_FILE, context_file, image_file, moments_file,
)
from rae.data.image_folder import to_rgb
from rae.data.latent_cache import autoencoder_identity, fingerprint
from rae.encoders.clip_text import CLIPTextEncoder
from rae.experiments.base import Experiment, RunContext
from rae.registry import EXPERIMENTS
from rae.io import atomic_write, atomic_write_json

MANIFEST_FILE = "preprocess_t2i.json"


def read_coco_captions(path: Path) -> tuple[list[str], list[list[str]]]:
    """(file names, captions of each) of a COCO captions json, images sorted by id, captions in file order."""
    try:
        data = json.loads(Path(path).read_text())
        files = {image["id"]: image["file_name"] for image in data["images"]}
        captions: dict[Any, list[str]] = {key: [] for key in files}
        for ann in data["annotations"]:
            captions[ann["image_id"]].append(ann["caption"])
    except FileNotFoundError:
        raise FileNotFoundError(f"preprocess_t2i.captions: no such file {path}; expected a COCO captions json "
                                "(annotations/captions_train2014.json)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"preprocess_t2i.captions: {path} is not a COCO captions json with 'images' (id, "
                         f"file_name) and 'annotations' (image_id, caption): {type(exc).__name__}: {exc}") from None
    keys = sorted(files)
    empty = [files[key] for key in keys if not captions[key]]
    if empty:
        raise ValueError(f"preprocess_t2i.captions: {len(empty)} images of {path} have no caption, e.g. {empty[0]}")
    return [files[key] for key in keys], [captions[key] for key in keys]


def uvit_center_crop(image: Image.Image, resolution: int) -> Image.Image:
    """U-ViT's ``center_crop``: the central square of side min(H, W), resized to ``resolution`` with Lanczos."""
    side = min(image.size)
    left, top = (image.size[0] - side) // 2, (image.size[1] - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((resolution, resolution), Image.Resampling.LANCZOS)


class _Crops(Dataset):
    """Item k: (its index, the uint8 (3, R, R) crop of image ``indices[k]``)."""

    def __init__(self, folder: Path, files: list[str], indices: list[int], resolution: int) -> None:
        self.folder, self.files, self.indices, self.resolution = folder, files, indices, resolution

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[int, torch.Tensor]:
        index = self.indices[k]
        path = self.folder / self.files[index]
        try:
            with Image.open(path) as image:
                crop = uvit_center_crop(to_rgb(image), self.resolution)
        except (OSError, SyntaxError, ValueError) as exc:
            raise ValueError(f"preprocess_t2i: cannot read image {index}, {path}: {exc}") from exc
        return index, torch.from_numpy(np.asarray(crop, dtype=np.uint8).copy()).permute(2, 0, 1)


def save_npy(path: Path, array: torch.Tensor) -> None:
    """A float32 ``.npy`` file, written atomically (its temporary name does not end in .npy)."""
    values = array.detach().float().cpu().numpy()
    atomic_write(path, lambda f: np.save(f, values))


def save_png(path: Path, pixels: torch.Tensor) -> None:
    """A (3, H, W) uint8 image as PNG, atomically."""
    buffer = io.BytesIO()
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))


@EXPERIMENTS.register("preprocess_t2i")
class PreprocessT2I(Experiment):
    """Write one split of the U-ViT layout under ``path`` from ``images`` (a folder) and ``captions`` (json).

    Args:
      autoencoder: the SD-VAE (``@autoencoder.sd_vae()``, ``sd-vae-ft-mse`` as U-ViT's
        ``autoencoder_kl.pth``), whose ``moments`` are stored.
      text_encoder: the CLIP text tower (``@text_encoder.clip_text()``, ``openai/clip-vit-large-patch14``).
      images: the folder the json's ``file_name`` entries are relative to (e.g. ``train2014``).
      captions: the COCO captions json (``annotations/captions_train2014.json``).
      path: the layout's root; this run writes ``<path>/<split>/`` and ``<path>/empty_context.npy``.
      split: "train" or "val" (REPA's names), or any folder name.
      resolution: crop size (256: moments of 8 x 32 x 32); shard_size, batch_size, num_workers: work
        units per rank, images per forward pass, image-reading processes; max_shards: write at most this
        many shards in this run (time-limited jobs; rerun to go on); write_images: also the ``{i}.png`` crops.
    """

    kind = "preprocess_t2i"

    def __init__(self, autoencoder: nn.Module, text_encoder: CLIPTextEncoder, images: str, captions: str, path: str,
                 split: str = "train", resolution: int = 256, shard_size: int = 1000, batch_size: int = 32,
                 num_workers: int = 4, max_shards: int | None = None, write_images: bool = True) -> None:
        if shard_size < 1 or batch_size < 1 or (max_shards is not None and max_shards < 1):
            raise ValueError(f"preprocess_t2i: shard_size {shard_size}, batch_size {batch_size} and max_shards "
                             f"{max_shards} must be positive")
        if not hasattr(autoencoder, "moments"):
            raise ValueError(f"preprocess_t2i.autoencoder must store posterior moments (the SD-VAE, "
                             f"@autoencoder.sd_vae()); {type(autoencoder).__name__} has no `moments`")
        if getattr(autoencoder, "image_size", resolution) != resolution:
            raise ValueError(f"preprocess_t2i.resolution {resolution} differs from sd_vae.image_size "
                             f"{autoencoder.image_size}; set both to the crop size")
        self.autoencoder = autoencoder
        self.text_encoder = text_encoder
        self.images = Path(images).expanduser()
        self.captions = Path(captions).expanduser()
        self.path = Path(path).expanduser()
        self.split = split
        self.resolution = resolution
        self.shard_size = shard_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.max_shards = max_shards
        self.write_images = write_images

    def models(self) -> dict[str, nn.Module]:
        return {"autoencoder": self.autoencoder, "text_encoder": self.text_encoder}

    def tags(self) -> list[str]:
        return [self.kind, type(self.autoencoder).__name__]

    def identity(self) -> dict[str, Any]:
        """What makes two runs' files interchangeable: the crop size and both encoders' weights."""
        return {"format": 1, "resolution": self.resolution, "autoencoder": autoencoder_identity(self.autoencoder),
                "text_encoder": {"weights": fingerprint(sorted(self.text_encoder.state_dict().items())),
                                 "tokenizer": self.text_encoder.tokenizer_kind,
                                 "max_length": self.text_encoder.max_length}}

    def done(self, folder: Path, index: int) -> bool:
        """An item is complete when its moments exist (written last) and, if asked for, its crop."""
        return moments_file(folder, index).is_file() and (not self.write_images or image_file(folder, index).is_file())

    def run(self, ctx: RunContext) -> dict[str, Any]:
        acc = ctx.accelerator
        files, captions = read_coco_captions(self.captions)
        folder = self.path / self.split
        autoencoder = self.autoencoder.to(acc.device).eval()
        text_encoder = self.text_encoder.to(acc.device).eval()
        with acc.main_first():
            if acc.is_main:
                self._open(folder, captions, text_encoder)
        num_shards = -(-len(files) // self.shard_size)
        mine = [k for k in range(num_shards) if k % acc.world_size == acc.rank]
        todo = [k for k in mine if not all(self.done(folder, i) for i in self._items(k, len(files)))]
        todo = todo[: self.max_shards] if self.max_shards is not None else todo
        items = [i for k in todo for i in self._items(k, len(files)) if not self.done(folder, i)]
        ctx.log.info("preprocess_t2i: %d images in %s; this rank writes %d of them (%d shards) now",
                     len(files), folder, len(items), len(todo))
        written = self._encode(ctx, autoencoder, text_encoder, folder, files, captions, items) if items else 0
        acc.barrier()
        complete = sum(self.done(folder, i) for i in range(len(files)))
        return {"features": str(folder), "images": len(files), "written_here": written, "complete": complete,
                "finished": complete == len(files)}

    def _items(self, shard: int, count: int) -> range:
        return range(shard * self.shard_size, min((shard + 1) * self.shard_size, count))

    def _open(self, folder: Path, captions: list[list[str]], text_encoder: CLIPTextEncoder) -> None:
        """Rank 0: check (or write) the manifest, write the caption strings and the empty context."""
        folder.mkdir(parents=True, exist_ok=True)
        manifest, identity = self.path / MANIFEST_FILE, self.identity()
        if manifest.is_file():
            found = json.loads(manifest.read_text())
            if found != identity:
                differ = sorted(k for k in identity if found.get(k) != identity[k])
                raise ValueError(f"preprocess_t2i: {self.path} was written with other settings ({', '.join(differ)} "
                                 f"differ; see {manifest}); use those, or another path")
        else:
            atomic_write_json(manifest, identity)
        for stale in folder.glob(".*.tmp-*"):
            stale.unlink(missing_ok=True)
        text = json.dumps({"captions": captions}).encode()
        atomic_write(folder / CAPTIONS_FILE, lambda f: f.write(text))
        if not (self.path / EMPTY_CONTEXT_FILE).is_file():
            save_npy(self.path / EMPTY_CONTEXT_FILE, text_encoder.encode([""])[0])

    @torch.no_grad()
    def _encode(self, ctx: RunContext, autoencoder: nn.Module, text_encoder: CLIPTextEncoder, folder: Path,
                files: list[str], captions: list[list[str]], items: list[int]) -> int:
        """Crop, encode and write ``items`` in batches; returns how many were written."""
        acc = ctx.accelerator
        loader = DataLoader(_Crops(self.images, files, items, self.resolution), batch_size=self.batch_size,
                            num_workers=self.num_workers)
        start, written = time.perf_counter(), 0
        for indices, crops in loader:
            moments = autoencoder.moments(crops.to(acc.device).float() / 255.0).cpu()
            texts = [c for i in indices.tolist() for c in captions[i]]
            contexts = iter(text_encoder.encode(texts).cpu())
            for row, index in enumerate(indices.tolist()):
                self._write(folder, index, crops[row], [next(contexts) for _ in captions[index]], moments[row])
            written += len(indices)
            rate = written / (time.perf_counter() - start)
            ctx.log.info("preprocess_t2i: %d / %d images of this rank, %.1f images/s", written, len(items), rate)
            ctx.tracker.track("images_per_s", rate, written)
        return written

    def _write(self, folder: Path, index: int, crop: torch.Tensor, contexts: list[torch.Tensor],
               moments: torch.Tensor) -> None:
        """One item's files, its moments last (their presence marks the item complete)."""
        if self.write_images:
            save_png(image_file(folder, index), crop)
        for k, context in enumerate(contexts):
            save_npy(context_file(folder, index, k), context)
        save_npy(moments_file(folder, index), moments)
