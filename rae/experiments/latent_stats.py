"""`latent_stats`: per-channel mean and variance of an encoder's latents over a dataset.

The result is saved in the layout of RAE's released ``stat.pt`` files,
``{"mean": (1, C, 1, 1), "var": (1, C, 1, 1)}``, which the autoencoder normalises with.
"""
from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist

from rae.data.base import LabelledImages
from rae.data.loader import ResumableSampler, make_loader
from rae.encoders.base import Encoder
from rae.experiments.base import Experiment, RunContext
from rae.moments import RunningMoments
from rae.registry import EXPERIMENTS
from rae.train.checkpoint import atomic_save


@EXPERIMENTS.register("latent_stats")
class LatentStats(Experiment):
    """Encode ``dataset`` (or its first ``max_images``) and accumulate float64 channel moments."""

    kind = "latent_stats"

    def __init__(
        self,
        encoder: Encoder,
        dataset: LabelledImages,
        batch_size: int = 64,
        num_workers: int = 4,
        max_images: int | None = None,
        output: str = "stat.pt",
        log_every: int = 50,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"latent_stats.batch_size must be positive, got {batch_size}")
        self.encoder = encoder
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.max_images = max_images
        self.output = output
        self.log_every = log_every

    def models(self) -> dict[str, torch.nn.Module]:
        return {"encoder": self.encoder}

    def latent_shape(self) -> tuple[int, ...]:
        return (self.encoder.hidden_size, *self.encoder.token_grid)

    def tags(self) -> list[str]:
        return [self.kind, type(self.encoder).__name__]

    def run(self, ctx: RunContext) -> dict[str, Any]:
        acc = ctx.accelerator
        encoder = self.encoder.to(acc.device)
        total = len(self.dataset) if self.max_images is None else min(self.max_images, len(self.dataset))
        sampler = ResumableSampler(total, seed=ctx.seed, shuffle=False, rank=acc.rank,
                                   world_size=acc.world_size, drop_last=False)
        loader = make_loader(self.dataset, self.batch_size, sampler, self.num_workers,
                             pin_memory=acc.device.type == "cuda")
        moments = RunningMoments(encoder.hidden_size)
        start, seen = time.time(), 0
        with torch.no_grad():
            for i, (images, _) in enumerate(loader):
                with acc.autocast():
                    tokens = encoder(images.to(acc.device, non_blocking=True))
                moments.update(tokens)
                seen += images.shape[0]
                if (i + 1) % self.log_every == 0:
                    ctx.log.info("latent_stats: %d / %d images", seen * acc.world_size, total)
                    ctx.tracker.track("images_per_s", seen / (time.time() - start), seen)
        moments = _merge_across_ranks(moments, acc.device) if acc.distributed else moments
        stats = {
            "mean": moments.mean.float().view(1, -1, 1, 1),
            "var": moments.var.float().view(1, -1, 1, 1),
        }
        out = ctx.run_dir / self.output
        if acc.is_main:
            atomic_save(stats, out)
            for name, values in stats.items():
                ctx.tracker.track(f"latent_{name}_avg", values.mean().item(), 0)
                ctx.tracker.track(f"latent_{name}_min", values.min().item(), 0)
                ctx.tracker.track(f"latent_{name}_max", values.max().item(), 0)
            ctx.tracker.log_text("latent_stats", _table(stats))
        acc.barrier()
        return {"stats": str(out), "images": moments.count // (encoder.token_grid[0] * encoder.token_grid[1]),
                "channels": encoder.hidden_size}


def _merge_across_ranks(local: RunningMoments, device: torch.device) -> RunningMoments:
    """Every rank's (count, mean, M2), gathered and merged exactly."""
    packed = torch.cat([torch.tensor([float(local.count)], dtype=torch.float64), local.mean, local.m2]).to(device)
    gathered = [torch.empty_like(packed) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, packed)
    merged = RunningMoments(local.mean.numel())
    c = local.mean.numel()
    for g in gathered:
        g = g.cpu()
        if g[0] > 0:
            merged.merge(int(g[0]), g[1 : 1 + c], g[1 + c :])
    return merged


def _table(stats: dict[str, torch.Tensor]) -> str:
    mean, var = stats["mean"].flatten(), stats["var"].flatten()
    rows = [f"{c}\t{m:.6f}\t{v:.6f}" for c, (m, v) in enumerate(zip(mean.tolist(), var.tolist()))]
    return "channel\tmean\tvar\n" + "\n".join(rows)
