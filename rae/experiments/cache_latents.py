"""`cache_latents`: encode a dataset once through the autoencoder into a latent cache.

The cache layout is `rae.data.latent_cache`'s. Shard k is written by rank ``k % world_size``;
rank 0 keeps the index's list of finished shards current. Running the same command again after
an interruption writes only the missing shards; a folder made with another encoder, resolution
or stats is refused, naming both.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from rae.data.base import LabelledImages
from rae.data.latent_cache import (
    DTYPES,
    CacheIndex,
    autoencoder_identity,
    finished_shards,
    open_for_writing,
    write_index,
    write_shard,
)
from rae.experiments.base import AutoencoderExperiment, RunContext
from rae.progress import Progress
from rae.registry import EXPERIMENTS


@EXPERIMENTS.register("cache_latents")
class CacheLatents(AutoencoderExperiment):
    """Latents of every image of ``dataset`` (and of its mirror image with ``flip``) into folder ``path``.

    Args:
      autoencoder: encodes images in [0, 1] to (normalised) latents; run in eval mode (no noise).
      dataset: deterministic labelled images (no random flips: flipped copies come from ``flip``).
      path: the cache folder, shared by the training runs that read it.
      shard_size: items per shard file.
      batch_size, num_workers: encoding batches per rank and data-loading processes.
      dtype: storage dtype, "bfloat16" (half the disk of "float32") or "float16".
      flip: also store the latents of horizontally flipped images, for random flips in training.
      max_shards: write at most this many shards in this run (time-limited jobs); rerun to go on.
    """

    kind = "cache_latents"

    def __init__(
        self,
        autoencoder: nn.Module,
        dataset: LabelledImages,
        path: str,
        shard_size: int = 1024,
        batch_size: int = 64,
        num_workers: int = 4,
        dtype: str = "bfloat16",
        flip: bool = False,
        max_shards: int | None = None,
    ) -> None:
        if shard_size < 1 or batch_size < 1:
            raise ValueError(f"cache_latents: shard_size and batch_size must be positive, "
                             f"got {shard_size}, {batch_size}")
        if dtype not in DTYPES:
            raise ValueError(f"cache_latents.dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if max_shards is not None and max_shards < 1:
            raise ValueError(f"cache_latents.max_shards must be positive or None, got {max_shards}")
        self.autoencoder, self.dataset, self.path = autoencoder, dataset, path
        self.shard_size, self.max_shards, self.dtype, self.flip = shard_size, max_shards, dtype, flip
        self.batch_size, self.num_workers = batch_size, num_workers

    def run(self, ctx: RunContext) -> dict[str, Any]:
        acc = ctx.accelerator
        if getattr(self.dataset, "random_flip", False):
            raise ValueError("cache_latents needs deterministic images, but the dataset flips at random: "
                             "set image_folder.random_flip = False and cache_latents.flip = True to store "
                             "flipped copies instead")
        autoencoder = self.autoencoder.to(acc.device).eval()
        index = CacheIndex(
            identity={**autoencoder_identity(autoencoder), "resolution": self.dataset.resolution},
            latent_shape=list(autoencoder.latent_shape), dtype=self.dtype, num_items=len(self.dataset),
            num_classes=self.dataset.num_classes, shard_size=self.shard_size, flip=self.flip,
        )
        folder = Path(self.path).expanduser()
        with acc.main_first():
            if acc.is_main:
                index = open_for_writing(folder, index)
        done = set(finished_shards(folder, index.num_shards))
        mine = [k for k in range(index.num_shards) if k % acc.world_size == acc.rank and k not in done]
        todo = mine[: self.max_shards] if self.max_shards is not None else mine
        ctx.log.info("cache_latents: %s has %d of %d shards; this rank writes %d now",
                     folder, len(done), index.num_shards, len(todo))
        written = self._encode(ctx, autoencoder, folder, index, todo)
        acc.barrier()
        final = replace(index, shards_done=finished_shards(folder, index.num_shards))
        if acc.is_main:
            write_index(folder, final)
        acc.barrier()
        return {"cache": str(folder), "items": final.num_items, "shards_written": len(written),
                "shards_done": f"{len(final.shards_done)}/{final.num_shards}", "complete": final.complete}

    @torch.no_grad()
    def _encode(self, ctx: RunContext, autoencoder: nn.Module, folder: Path, index: CacheIndex,
                shards: list[int]) -> list[int]:
        """Encode the items of ``shards`` in order, writing each shard as soon as its items are in."""
        acc = ctx.accelerator
        items = [i for k in shards for i in index.shard_items(k)]
        if not items:
            return []
        loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=items, num_workers=self.num_workers,
                            pin_memory=acc.device.type == "cuda")
        dtype = DTYPES[index.dtype]
        queue, written = list(shards), []
        buffers: dict[str, list[torch.Tensor]] = {"latents": [], "labels": [], "flipped": []}
        progress = Progress("cache_latents", "images", len(items), ctx.log, bar=acc.is_main)
        encoded = 0
        for images, labels in loader:
            images = images.to(acc.device, non_blocking=True)
            with acc.autocast():
                buffers["latents"].append(autoencoder.encode(images).to(dtype).cpu())
                if index.flip:
                    buffers["flipped"].append(autoencoder.encode(images.flip(-1)).to(dtype).cpu())
            buffers["labels"].append(labels)
            encoded += len(labels)
            progress.update(encoded, log_line=False)
            while queue and sum(len(b) for b in buffers["labels"]) >= len(index.shard_items(queue[0])):
                shard = queue.pop(0)
                buffers = self._write(folder, shard, len(index.shard_items(shard)), buffers)
                written.append(shard)
                if acc.is_main:
                    write_index(folder, replace(index, shards_done=finished_shards(folder, index.num_shards)))
                progress.update(encoded, f"wrote shard {shard} ({len(written)}/{len(shards)} of this rank's)")
                ctx.tracker.track("images_per_s", progress.rate or 0.0, len(written))
        progress.close()
        return written

    @staticmethod
    def _write(folder: Path, shard: int, size: int,
               buffers: dict[str, list[torch.Tensor]]) -> dict[str, list[torch.Tensor]]:
        """Write the first ``size`` buffered items as ``shard``; returns the rest, still buffered."""
        joined = {k: torch.cat(v) for k, v in buffers.items() if v}
        flipped = joined["flipped"][:size] if "flipped" in joined else None
        write_shard(folder, shard, joined["latents"][:size], joined["labels"][:size], flipped)
        return {k: [joined[k][size:]] if k in joined else [] for k in buffers}
