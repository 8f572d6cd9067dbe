"""`latent_stats`: mean and variance of an encoder's latents over a dataset, as ``stat.pt``.

By default one mean and variance per latent position, ``{"mean": (C, h, w), "var": (C, h, w)}``:
the layout of RAE's ``calculate_stat.py`` and its released files, which RAE's own reader loads
unchanged. Unlike that script, the moments are exact: float64 streaming (Chan's parallel
update) over the whole dataset, merged exactly across ranks, where the reference keeps a
momentum-0.1 running average that starts from mean 0 / var 1 and weights the last batches
most. ``per_channel = True`` writes one value per channel, (1, C, 1, 1), instead.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from rae.data.base import LabelledImages
from rae.data.loader import ResumableSampler, make_loader
from rae.encoders.base import Encoder
from rae.encoders.tokens import tokens_to_latent
from rae.experiments.base import Experiment, RunContext
from rae.moments import RunningMoments
from rae.progress import Progress
from rae.registry import EXPERIMENTS
from rae.io import atomic_save


@EXPERIMENTS.register("latent_stats")
class LatentStats(Experiment):
    """Encode ``dataset`` (or its first ``max_images``) and accumulate float64 moments per position or channel."""

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
        per_channel: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"latent_stats.batch_size must be positive, got {batch_size}")
        self.encoder, self.dataset, self.max_images = encoder, dataset, max_images
        self.batch_size, self.num_workers, self.log_every = batch_size, num_workers, log_every
        self.output, self.per_channel = output, per_channel

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
        c, (h, w) = encoder.hidden_size, encoder.token_grid
        moments = RunningMoments(c if self.per_channel else c * h * w)
        seen = 0
        progress = Progress("latent_stats", "images", total, ctx.log, bar=acc.is_main)
        with torch.no_grad():
            for i, (images, _) in enumerate(loader):
                with acc.autocast():
                    tokens = encoder(images.to(acc.device, non_blocking=True))
                moments.update(tokens if self.per_channel else tokens_to_latent(tokens, (h, w)).flatten(1))
                seen += images.shape[0]
                due = (i + 1) % self.log_every == 0
                progress.update(min(seen * acc.world_size, total), log_line=due)
                if due:
                    ctx.tracker.track("images_per_s", (progress.rate or 0.0) / acc.world_size, seen)
        progress.close()
        moments = _merge_across_ranks(moments, acc.device) if acc.distributed else moments
        layout = (1, c, 1, 1) if self.per_channel else (c, h, w)
        stats = {"mean": moments.mean.float().view(layout), "var": moments.var.float().view(layout)}
        out = ctx.run_dir / self.output
        if acc.is_main:
            atomic_save(stats, out)
            for name, values in stats.items():
                ctx.tracker.track(f"latent_{name}_avg", values.mean().item(), 0)
                ctx.tracker.track(f"latent_{name}_min", values.min().item(), 0)
                ctx.tracker.track(f"latent_{name}_max", values.max().item(), 0)
            ctx.tracker.log_text("latent_stats", _table(stats))
        acc.barrier()
        images = moments.count // (h * w) if self.per_channel else moments.count
        return {"stats": str(out), "images": images, "layout": "per channel" if self.per_channel else "per position",
                "channels": c}


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
    """Channel, mean and variance (averaged over positions in the per-position layout)."""
    channels = stats["mean"].shape[-3]
    mean, var = (stats[k].reshape(channels, -1).mean(1) for k in ("mean", "var"))
    rows = [f"{c}\t{m:.6f}\t{v:.6f}" for c, (m, v) in enumerate(zip(mean.tolist(), var.tolist()))]
    return "channel\tmean\tvar\n" + "\n".join(rows)
