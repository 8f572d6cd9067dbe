"""`sample`: draw ``num_samples`` class-conditional images from a trained backbone for FID (ADM protocol).

Sample ``i`` is a pure function of ``(seed, i)``: its noise (and its label, with random labels)
comes from a generator seeded by both, so any batch size, number of ranks or restart gives the
same images. Ranks take the disjoint indices ``rank, rank + world, ...``; each image is written as
soon as it is decoded (`ImageStore`), and a rerun makes only the missing ones. At the end rank 0
packs ``samples.npz`` (ADM's evaluation format) and a grid PNG, and logs the grid.

Batch independence holds for fixed-step samplers; an adaptive ODE solver picks its steps from
the error of the whole batch, and a stochastic sampler draws its noise per batch.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from rae.backbones.base import Backbone
from rae.experiments.base import Experiment, RunContext
from rae.experiments.image_store import ImageStore, check_quantize, chw_tensor, save_grid
from rae.hub import resolve
from rae.progress import Progress
from rae.registry import EXPERIMENTS
from rae.repa.checkpoint import load_repa_checkpoint
from rae.sampling.base import Sampler
from rae.sampling.guidance import Guidance
from rae.transport.transport import Transport
from rae.weights import load_pretrained_weights, missing_weights

NPZ_FILE = "samples.npz"
GRID_FILE = "grid.png"
IMAGES_DIR = "images"
LABEL_MODES = ("equal", "random")


def sample_generator(seed: int, index: int) -> torch.Generator:
    """The generator of sample ``index``: seeded by (seed, index) only, so batching cannot change it."""
    if not 0 <= index < 2**32 or not 0 <= seed < 2**31:
        raise ValueError(f"seed {seed} and index {index} must fit 31 and 32 bits")
    return torch.Generator().manual_seed((seed << 32) | index)


def sample_inputs(seed: int, indices: list[int], latent_shape: tuple[int, ...], num_classes: int,
                  labels: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise (B, *latent_shape), labels (B,)) of the samples ``indices``; "equal" labels are ``i % num_classes``."""
    noise, ys = [], []
    for i in indices:
        g = sample_generator(seed, i)
        ys.append(i % num_classes if labels == "equal" else int(torch.randint(num_classes, (), generator=g)))
        noise.append(torch.randn(latent_shape, generator=g))
    return torch.stack(noise), torch.tensor(ys, dtype=torch.long)


@EXPERIMENTS.register("sample")
class Sample(Experiment):
    """Sample images from ``backbone`` (its EMA weights) with ``sampler`` and ``guidance``, decoded by ``autoencoder``.

    Args:
      backbone: the trained stage-2 network; weights_path: its weights, our stage2 ``ema.pt`` or a
        released RAE checkpoint (its ``ema`` entry), loaded in ``load_weights``.
      autoencoder: decodes latents to images in [0, 1].
      transport: converts the backbone's prediction to velocity; its path drives SDE samplers.
      sampler: the solver (gin/samplers/*); guidance: the rule mixing predictions (gin/guidance/*).
      num_samples: images to make (50,000 for FID-50k).
      num_classes: classes to sample (default: the backbone's); labels: "equal" (exactly
        num_samples / num_classes of each, ADM/RAE's protocol) or "random" (uniform per sample).
      batch_size: samples per forward pass on each rank.
      grid_size, grid_rows: the first ``grid_size`` samples form the logged grid, ``grid_rows`` per row.
      log_every: batches between progress logs.
      quantize: floats to 8 bits by "truncate" (RAE's and REPA's samplers) or "round" (`rae.experiments.image_store`).
    """

    kind = "sample"

    def __init__(
        self,
        backbone: Backbone,
        autoencoder: nn.Module,
        transport: Transport,
        sampler: Sampler,
        guidance: Guidance,
        weights_path: str | None = None,
        num_samples: int = 50_000,
        num_classes: int | None = None,
        labels: str = "equal",
        batch_size: int = 64,
        grid_size: int = 64,
        grid_rows: int = 8,
        log_every: int = 10,
        quantize: str = "truncate",
    ) -> None:
        if labels not in LABEL_MODES:
            raise ValueError(f"sample.labels must be one of {LABEL_MODES}, got {labels!r}")
        if num_samples < 1 or batch_size < 1 or grid_size < 0 or grid_rows < 1:
            raise ValueError(f"sample: num_samples {num_samples}, batch_size {batch_size}, grid_rows {grid_rows} "
                             f"must be positive and grid_size {grid_size} >= 0")
        classes = backbone.num_classes if num_classes is None else num_classes
        if not 1 <= classes <= backbone.num_classes:
            raise ValueError(f"sample.num_classes {classes} is out of range: the backbone embeds "
                             f"{backbone.num_classes} classes (ditdh.num_classes / lightningdit.num_classes)")
        if labels == "equal" and num_samples % classes:
            raise ValueError(f"sample.labels = 'equal' needs sample.num_samples ({num_samples}) divisible by the "
                             f"{classes} classes; use a multiple of {classes} or labels = 'random'")
        if tuple(autoencoder.latent_shape) != tuple(backbone.latent_shape):
            raise ValueError(f"the autoencoder's latents {tuple(autoencoder.latent_shape)} differ from the "
                             f"backbone's {tuple(backbone.latent_shape)}: set the backbone's in_channels / input_size")
        self.backbone = backbone
        self.autoencoder = autoencoder
        self.transport = transport
        self.sampler = sampler
        self.guidance = guidance
        self.weights_path = weights_path
        self.num_samples = num_samples
        self.num_classes = classes
        self.labels = labels
        self.batch_size = batch_size
        self.grid_size = min(grid_size, num_samples)
        self.grid_rows = grid_rows
        self.log_every = log_every
        self.quantize = check_quantize(quantize, "sample.quantize")

    # ---- what the runner asks ----
    def models(self) -> dict[str, nn.Module]:
        found = {"backbone": self.backbone, "autoencoder": self.autoencoder, "guidance": self.guidance}
        return {name: model for name, model in found.items() if isinstance(model, nn.Module)}

    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.backbone.latent_shape)

    def tags(self) -> list[str]:
        return [self.kind, type(self.backbone).__name__, type(self.sampler).__name__, type(self.guidance).__name__]

    def load_weights(self, allow_random: bool, log: logging.Logger) -> None:
        """The backbone's weights from ``weights_path``, then every pretrained part (encoder, decoder, guide).

        A REPA checkpoint's projector heads (``projectors.*``) serve only the alignment loss and are
        left out by name; any other key the backbone lacks is refused.
        """
        path = None if self.weights_path is None else resolve(self.weights_path, "sample.weights_path")
        if path is None or not path.is_file():
            missing_weights("the sampled backbone", f"sample.weights_path={self.weights_path!r}",
                            "Set `sample.weights_path` to stage2's ema.pt, a released RAE checkpoint or a REPA "
                            "checkpoint", allow_random, log)
        else:
            projectors = load_repa_checkpoint(self.backbone, path, prefer="ema")
            log.info("sample: backbone weights (ema) from %s%s", self.weights_path,
                     f"; left out {len(projectors)} projector tensors of REPA's alignment loss" if projectors else "")
        if getattr(self.autoencoder, "decoder_path", False) is None:  # an RAE whose decoder nothing loads
            missing_weights("the decoder of sample.autoencoder", "no decoder_path (the decoder is random)",
                            "Set rae.decoder_path to a decoder checkpoint (stage 1's decoder_ema.pt or a released "
                            "model.pt)", allow_random, log)
        for model in self.models().values():
            load_pretrained_weights(model, allow_random=allow_random, log=log)

    def check(self, world_size: int) -> None:
        """Config-only checks, made by the runner before the run folder (`Experiment.check`)."""
        if self.log_every < 1:
            raise ValueError(f"sample.log_every = {self.log_every}: expected a positive number of batches")

    # ---- sampling ----
    def run(self, ctx: RunContext) -> dict[str, Any]:
        acc = ctx.accelerator
        store = ImageStore(ctx.run_dir / IMAGES_DIR, self.quantize)
        done = store.done()
        mine = [i for i in range(acc.rank, self.num_samples, acc.world_size) if i not in done]
        ctx.log.info("sample: rank %d makes %d of its %d images (%d already done in all)", acc.rank, len(mine),
                     len(range(acc.rank, self.num_samples, acc.world_size)), len(done))

        model = self.backbone.to(acc.device).eval()
        autoencoder = self.autoencoder.to(acc.device).eval()
        if isinstance(self.guidance, nn.Module):
            self.guidance.to(acc.device).eval()
        velocity = self.guidance.velocity_fn(model, to_velocity=self.transport.velocity,
                                             num_classes=self.backbone.num_classes)
        shape = tuple(self.backbone.latent_shape)
        made = 0
        batches = [mine[k:k + self.batch_size] for k in range(0, len(mine), self.batch_size)]
        progress = Progress("sample", "images", len(mine), ctx.log, bar=acc.is_main)
        for b, indices in enumerate(batches):
            noise, labels = sample_inputs(ctx.seed, indices, shape, self.num_classes, self.labels)
            with torch.inference_mode(), acc.autocast():
                latents = self.sampler.sample(velocity, noise.to(acc.device), labels.to(acc.device),
                                              generator=sample_generator(ctx.seed, indices[0]),
                                              path=self.transport.path)
                images = autoencoder.decode(latents).float()
            store.write(indices, images.cpu(), labels)
            made += len(indices)
            due = (b + 1) % self.log_every == 0 or b + 1 == len(batches)
            progress.update(made, "on rank 0" if acc.distributed else "", log_line=due)
            if acc.is_main and due:
                ctx.tracker.track("images_per_second", (progress.rate or 0.0) * acc.world_size,
                                  step=made * acc.world_size)
        progress.close()
        acc.barrier()
        return self._finish(ctx, store, made)

    def _finish(self, ctx: RunContext, store: ImageStore, made: int) -> dict[str, Any]:
        """Rank 0: the ADM npz of all samples and the grid of the first ``grid_size``, logged with class captions."""
        npz = ctx.run_dir / NPZ_FILE
        summary = {"images": str(store.folder), "npz": str(npz), "made_here": made}
        if not ctx.accelerator.is_main:
            return summary
        store.pack_npz(npz, self.num_samples)
        if self.grid_size:
            read = [store.read(i) for i in range(self.grid_size)]
            grid = torch.stack([chw_tensor(image) for image, _ in read])
            save_grid(grid, ctx.run_dir / GRID_FILE, self.grid_rows)
            ctx.tracker.track_images("samples", grid.float() / 255, step=self.num_samples,
                                     captions=[f"class {label}" for _, label in read])
            summary["grid"] = str(ctx.run_dir / GRID_FILE)
        return summary
