"""`sample`: draw ``num_samples`` images from a trained backbone for FID (ADM protocol), conditioned on
class labels or, for a text-to-image backbone, on captions of caption data (`rae.conditions`).

Sample ``i`` is a pure function of ``(seed, i)``: its noise (and its random label, or its caption)
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
from rae.conditions import (
    CONTEXT, LABEL, CaptionData, Captions, ClassLabels, ConditionSource, check_condition, check_context_width,
    sample_generator,
)
from rae.experiments.base import Experiment, RunContext
from rae.experiments.image_store import ImageStore, check_quantize, chw_tensor, save_grid
from rae.hub import resolve
from rae.progress import Progress
from rae.registry import EXPERIMENTS
from rae.repa.checkpoint import load_repa_checkpoint
from rae.sampling.base import Sampler, VelocityFn
from rae.sampling.guidance import Guidance
from rae.transport.transport import Transport
from rae.weights import load_pretrained_weights, missing_weights

NPZ_FILE = "samples.npz"
GRID_FILE = "grid.png"
IMAGES_DIR = "images"
LABEL_MODES = ClassLabels.MODES


def sample_inputs(seed: int, indices: list[int], latent_shape: tuple[int, ...], num_classes: int,
                  labels: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise (B, *latent_shape), labels (B,)) of the samples ``indices``; "equal" labels are ``i % num_classes``."""
    noise, y, _, _ = ClassLabels(num_classes, labels).draw(seed, indices, latent_shape)
    return noise, y


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
      captions: caption data (``@dataset.coco_features()``, ``@dataset.embedded_captions()``) for a
        text-conditioned backbone, instead of labels: sample i gets a random caption of a distinct item
        (`rae.conditions.Captions`); guidance's null condition is the data's empty caption context.
      prefer: the checkpoint's weights to sample, "ema" (RAE's and REPA's generate.py) or "model" (REPA's
        generate_t2i.py loads ``['model']``).
      batch_size: samples per forward pass on each rank.
      grid_size, grid_rows: the first ``grid_size`` samples form the logged grid, ``grid_rows`` per row;
        grid_by_class: sort it by class (with "equal" labels and grid_rows = grid_size / num_classes: a row per class).
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
        captions: CaptionData | None = None,
        prefer: str = "ema",
        batch_size: int = 64,
        grid_size: int = 64,
        grid_rows: int = 8,
        grid_by_class: bool = False,
        log_every: int = 10,
        quantize: str = "truncate",
    ) -> None:
        if labels not in LABEL_MODES:
            raise ValueError(f"sample.labels must be one of {LABEL_MODES}, got {labels!r}")
        if num_samples < 1 or batch_size < 1 or grid_size < 0 or grid_rows < 1:
            raise ValueError(f"sample: num_samples {num_samples}, batch_size {batch_size}, grid_rows {grid_rows} "
                             f"must be positive and grid_size {grid_size} >= 0")
        if prefer not in ("ema", "model"):
            raise ValueError(f"sample.prefer must be 'ema' or 'model', got {prefer!r}")
        check_condition(backbone, CONTEXT if captions is not None else LABEL,
                        f"sample.captions ({type(captions).__name__})" if captions is not None else "sample.labels")
        classes = None
        if captions is None:
            classes = backbone.num_classes if num_classes is None else num_classes
            if not 1 <= classes <= backbone.num_classes:
                raise ValueError(f"sample.num_classes {classes} is out of range: the backbone embeds "
                                 f"{backbone.num_classes} classes (ditdh.num_classes / lightningdit.num_classes)")
            if labels == "equal" and num_samples % classes:
                raise ValueError(f"sample.labels = 'equal' needs sample.num_samples ({num_samples}) divisible by "
                                 f"the {classes} classes; use a multiple of {classes} or labels = 'random'")
        elif num_classes is not None:
            raise ValueError("sample.num_classes applies to class labels; with sample.captions leave it unset")
        if tuple(autoencoder.latent_shape) != tuple(backbone.latent_shape):
            raise ValueError(f"the autoencoder's latents {tuple(autoencoder.latent_shape)} differ from the "
                             f"backbone's {tuple(backbone.latent_shape)}: set the backbone's in_channels / input_size")
        self.backbone, self.autoencoder, self.transport = backbone, autoencoder, transport
        self.sampler, self.guidance = sampler, guidance
        self.weights_path, self.prefer = weights_path, prefer
        self.num_samples, self.num_classes, self.labels, self.captions = num_samples, classes, labels, captions
        self.batch_size, self.log_every = batch_size, log_every
        self.grid_size, self.grid_rows = min(grid_size, num_samples), grid_rows
        self.grid_by_class = grid_by_class
        self.quantize = check_quantize(quantize, "sample.quantize")

    # ---- what the runner asks ----
    def models(self) -> dict[str, nn.Module]:
        found = {"backbone": self.backbone, "autoencoder": self.autoencoder, "guidance": self.guidance,
                 "text_encoder": getattr(self.captions, "text_encoder", None)}
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
            projectors = load_repa_checkpoint(self.backbone, path, prefer=self.prefer)
            log.info("sample: backbone weights (%s) from %s%s", self.prefer, self.weights_path,
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

        autoencoder = self.autoencoder.to(acc.device).eval()
        conditions = self.conditions(ctx.seed)
        velocity = self.velocity(conditions, acc.device)
        shape = tuple(self.backbone.latent_shape)
        made = 0
        batches = [mine[k:k + self.batch_size] for k in range(0, len(mine), self.batch_size)]
        progress = Progress("sample", "images", len(mine), ctx.log, bar=acc.is_main)
        for b, indices in enumerate(batches):
            noise, y, stored, _ = conditions.draw(ctx.seed, indices, shape)
            with torch.inference_mode(), acc.autocast():
                latents = self.sampler.sample(velocity, noise.to(acc.device), y.to(acc.device),
                                              generator=sample_generator(ctx.seed, indices[0]),
                                              path=self.transport.path)
                images = autoencoder.decode(latents).float()
            store.write(indices, images.cpu(), stored)
            made += len(indices)
            due = (b + 1) % self.log_every == 0 or b + 1 == len(batches)
            progress.update(made, "on rank 0" if acc.distributed else "", log_line=due)
            if acc.is_main and due:
                ctx.tracker.track("images_per_second", (progress.rate or 0.0) * acc.world_size,
                                  step=made * acc.world_size)
        progress.close()
        acc.barrier()
        return self._finish(ctx, store, made, conditions)

    def velocity(self, conditions: ConditionSource, device: torch.device) -> VelocityFn:
        """The guided velocity the sampler integrates: backbone and guide moved to ``device`` in eval mode."""
        model = self.backbone.to(device).eval()
        if isinstance(self.guidance, nn.Module):
            self.guidance.to(device).eval()
        null = conditions.null_condition()
        return self.guidance.velocity_fn(
            model, to_velocity=self.transport.velocity,
            num_classes=self.backbone.num_classes if conditions.kind == LABEL else None,
            null_condition=None if null is None else null.to(device))

    def conditions(self, seed: int) -> ConditionSource:
        """Where the samples' conditions come from: the caption data's captions, or class labels."""
        if self.captions is None:
            return ClassLabels(self.num_classes, self.labels)
        check_context_width(self.backbone, self.captions, f"sample.captions ({type(self.captions).__name__})")
        return Captions(self.captions, seed)

    def _finish(self, ctx: RunContext, store: ImageStore, made: int, conditions: ConditionSource) -> dict[str, Any]:
        """Rank 0: the ADM npz of all samples and the grid of the first ``grid_size``, logged with the
        samples' captions (``class 3``, or the caption text)."""
        npz = ctx.run_dir / NPZ_FILE
        summary = {"images": str(store.folder), "npz": str(npz), "made_here": made}
        if not ctx.accelerator.is_main:
            return summary
        store.pack_npz(npz, self.num_samples)
        if self.grid_size:
            order = sorted(range(self.grid_size), key=lambda i: store.read(i)[1] if self.grid_by_class else 0)
            grid = torch.stack([chw_tensor(store.read(i)[0]) for i in order])
            save_grid(grid, ctx.run_dir / GRID_FILE, self.grid_rows)
            ctx.tracker.track_images("samples", grid.float() / 255, step=self.num_samples,
                                     captions=conditions.captions(ctx.seed, order))
            summary["grid"] = str(ctx.run_dir / GRID_FILE)
        return summary
