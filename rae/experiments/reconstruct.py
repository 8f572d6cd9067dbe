"""`reconstruct`: RAE stage 1's evaluation: a dataset through the autoencoder, scored by PSNR and SSIM.

Every image goes through ``encode`` and ``decode`` in eval mode (no latent noise). Ranks take the
disjoint indices ``rank, rank + world, ...``; each reconstruction and its original, quantised to
8 bits as stored (clamped and truncated like RAE's ``src/stage1_sample_ddp.py``, or rounded:
``quantize``), are written as soon as they are made (two `ImageStore` folders), and a rerun makes
only the missing pairs. After a barrier rank 0 scores every stored pair (PSNR and SSIM on
the 8-bit images, per image, then averaged), so the scores cover all images whatever the number
of ranks or where an earlier run stopped. Rank 0 also packs ``reconstructions.npz`` and
``references.npz`` (ADM's format) for rFID with the ``eval`` experiment (``eval.prefix = "r"``),
and saves and logs a grid of originals above their reconstructions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from rae.data.base import LabelledImages
from rae.experiments.base import AutoencoderExperiment, RunContext
from rae.experiments.image_store import ImageStore, check_quantize, chw_tensor, save_grid
from rae.metrics.pixel import psnr, ssim
from rae.progress import Progress
from rae.registry import EXPERIMENTS
from rae.io import atomic_write_json

RECONSTRUCTIONS_DIR = "reconstructions"
REFERENCES_DIR = "references"
RECONSTRUCTIONS_NPZ = "reconstructions.npz"
REFERENCES_NPZ = "references.npz"
GRID_FILE = "grid.png"
METRICS_FILE = "metrics.json"


@EXPERIMENTS.register("reconstruct")
class Reconstruct(AutoencoderExperiment):
    """Reconstruct the first ``num_images`` of ``dataset`` with ``autoencoder``; report PSNR and SSIM.

    Args:
      autoencoder: `encode` (images in [0, 1]) and `decode` (latents -> images); run in eval mode.
      dataset: deterministic labelled images (no random flips), (3, H, W) in [0, 1].
      num_images: images to reconstruct, the first ones of the dataset (default: all).
      batch_size: images per forward pass on each rank (and per scoring batch on rank 0).
      grid_size: the first ``grid_size`` originals above their reconstructions in ``grid.png``.
      split: the metrics' context in the tracker (e.g. ``psnr{split=val}``).
      num_workers: data-loading processes (reading the dataset, and the stored PNGs to score).
      log_every: batches between progress logs.
      quantize: floats to 8 bits by "truncate" (RAE's stage1_sample_ddp.py) or "round"; the originals,
        8-bit values already, come out exactly either way.
    """

    kind = "reconstruct"

    def __init__(
        self,
        autoencoder: nn.Module,
        dataset: LabelledImages,
        num_images: int | None = None,
        batch_size: int = 64,
        grid_size: int = 8,
        split: str = "val",
        num_workers: int = 4,
        log_every: int = 10,
        quantize: str = "truncate",
    ) -> None:
        if num_images is not None and num_images < 1:
            raise ValueError(f"reconstruct.num_images must be positive or None (all images), got {num_images}")
        if batch_size < 1 or grid_size < 0 or num_workers < 0 or log_every < 1:
            raise ValueError(f"reconstruct: batch_size {batch_size} and log_every {log_every} must be positive, "
                             f"grid_size {grid_size} and num_workers {num_workers} >= 0")
        self.autoencoder, self.dataset, self.split = autoencoder, dataset, split
        self.num_images, self.batch_size, self.num_workers = num_images, batch_size, num_workers
        self.grid_size, self.log_every = grid_size, log_every
        self.quantize = check_quantize(quantize, "reconstruct.quantize")

    # ---- reconstruction ----
    def _count(self) -> int:
        """Images to reconstruct; the dataset's length is read here, not at construction (dry runs)."""
        available = len(self.dataset)
        if self.num_images is not None and self.num_images > available:
            raise ValueError(f"reconstruct.num_images = {self.num_images}, but the dataset has {available} images")
        return available if self.num_images is None else self.num_images

    def run(self, ctx: RunContext) -> dict[str, Any]:
        acc = ctx.accelerator
        if getattr(self.dataset, "random_flip", False):
            raise ValueError("reconstruct needs deterministic images, but the dataset flips at random: "
                             "set image_folder.random_flip = False")
        count = self._count()
        reconstructions = ImageStore(ctx.run_dir / RECONSTRUCTIONS_DIR, self.quantize)
        references = ImageStore(ctx.run_dir / REFERENCES_DIR, self.quantize)
        done = reconstructions.done() & references.done()
        ours = range(acc.rank, count, acc.world_size)
        mine = [i for i in ours if i not in done]
        ctx.log.info("reconstruct: rank %d makes %d of its %d images (%d of %d already done in all)",
                     acc.rank, len(mine), len(ours), len(done & set(range(count))), count)

        made = self._reconstruct(ctx, mine, reconstructions, references)
        acc.barrier()
        summary = {"reconstructions": str(reconstructions.folder), "references": str(references.folder),
                   "made_here": made}
        if acc.is_main:
            summary.update(self._finish(ctx, reconstructions, references, count))
        return summary

    def _reconstruct(self, ctx: RunContext, indices: list[int], reconstructions: ImageStore,
                     references: ImageStore) -> int:
        """Reconstruct the images ``indices`` in batches, writing each pair as it is made; returns the count."""
        acc = ctx.accelerator
        if not indices:
            return 0
        autoencoder = self.autoencoder.to(acc.device).eval()
        loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=indices, num_workers=self.num_workers,
                            pin_memory=acc.device.type == "cuda")
        made = 0
        progress = Progress("reconstruct", "images", len(indices), ctx.log, bar=acc.is_main)
        for b, (images, labels) in enumerate(loader):
            batch = indices[made:made + len(labels)]
            with torch.inference_mode(), acc.autocast():
                recon = autoencoder.decode(autoencoder.encode(images.to(acc.device))).float()
            if recon.shape != images.shape:
                raise ValueError(f"reconstruct: the autoencoder turns {tuple(images.shape[1:])} images into "
                                 f"{tuple(recon.shape[1:])}: its decoder's output (token grid x decoder patch "
                                 "size) must match the dataset's resolution")
            references.write(batch, images, labels)
            reconstructions.write(batch, recon.cpu(), labels)
            made += len(batch)
            due = (b + 1) % self.log_every == 0 or made == len(indices)
            progress.update(made, f"on rank {acc.rank}" if acc.distributed else "", log_line=due)
            if due and acc.is_main:
                ctx.tracker.track("images_per_second", (progress.rate or 0.0) * acc.world_size,
                                  step=made * acc.world_size)
        progress.close()
        return made

    # ---- rank 0: scores, npz files, grid ----
    def _finish(self, ctx: RunContext, reconstructions: ImageStore, references: ImageStore,
                count: int) -> dict[str, Any]:
        """Pack both npz files (refused, naming them, if images are missing), score all stored pairs,
        save and log the grid; returns the summary."""
        paths = {"reconstructions_npz": str(reconstructions.pack_npz(ctx.run_dir / RECONSTRUCTIONS_NPZ, count)),
                 "references_npz": str(references.pack_npz(ctx.run_dir / REFERENCES_NPZ, count))}
        scores = self._score(ctx, reconstructions, references, count)
        metrics = {name: float(values.mean()) for name, values in scores.items()}
        ctx.tracker.track_dict(metrics, step=0, context={"split": self.split})
        for name, value in metrics.items():
            ctx.log.info("reconstruct: %s = %.4f over %d images (split %s)", name, value, count, self.split)
        if self.grid_size:
            paths["grid"] = str(self._grid(ctx, reconstructions, references, min(self.grid_size, count)))
        record = {**metrics, "images": count, "split": self.split, **paths}
        atomic_write_json(ctx.run_dir / METRICS_FILE, record)
        return {**metrics, "images": count, "metrics": str(ctx.run_dir / METRICS_FILE), **paths}

    def _score(self, ctx: RunContext, reconstructions: ImageStore, references: ImageStore,
               count: int) -> dict[str, np.ndarray]:
        """Per-image PSNR and SSIM (float64, index order) of the stored 8-bit pairs ``0..count-1``."""
        device = ctx.accelerator.device
        loader = DataLoader(_StoredPairs(reconstructions, references), batch_size=self.batch_size,
                            sampler=range(count), num_workers=self.num_workers)
        found: dict[str, list[torch.Tensor]] = {"psnr": [], "ssim": []}
        for recon, reference in loader:
            recon, reference = recon.to(device), reference.to(device)
            found["psnr"].append(psnr(recon, reference, data_range=255.0).cpu())
            found["ssim"].append(ssim(recon, reference, data_range=255.0).cpu())
        return {name: torch.cat(values).numpy() for name, values in found.items()}

    def _grid(self, ctx: RunContext, reconstructions: ImageStore, references: ImageStore, size: int) -> Path:
        """``grid.png``: the first ``size`` originals in one row, their reconstructions below; logged."""
        rows = [[references.read(i) for i in range(size)], [reconstructions.read(i) for i in range(size)]]
        grid = torch.stack([chw_tensor(image) for row in rows for image, _ in row])
        path = save_grid(grid, ctx.run_dir / GRID_FILE, size)
        captions = [f"{kind}, class {label}" for kind, row in zip(("original", "reconstruction"), rows)
                    for _, label in row]
        ctx.tracker.track_images("reconstructions", grid.float() / 255, step=0, captions=captions,
                                 context={"split": self.split})
        return path


class _StoredPairs(Dataset):
    """(reconstruction, reference) of a stored index as (3, H, W) uint8 tensors, read in loader workers."""

    def __init__(self, reconstructions: ImageStore, references: ImageStore) -> None:
        self.stores = (reconstructions, references)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        recon, reference = (chw_tensor(store.read(index)[0]) for store in self.stores)
        return recon, reference
