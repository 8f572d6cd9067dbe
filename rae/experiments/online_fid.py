"""FID during stage-2 training, as RAE's ``train.py`` evaluates it (``eval.eval_interval``: every 25000 steps).

Every ``every`` steps (and at the start of a fresh run, as the release's ``global_step % eval_interval
== 0`` check fires at step 0), each model named in ``models`` (the EMA, and with the release's
``eval_model: true`` the live model too) samples ``num_samples`` images, which are decoded,
quantised like stored samples, and compared with a reference batch by the Fréchet distance of
Inception pool features. The release draws one sample per validation image with its label (50
per class on ImageNet val): "equal" labels are that protocol. Samples are drawn exactly as the
``sample`` experiment draws them (a generator per index), and ranks share the work through
feature sums, so the score does not depend on the number of ranks.
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch
import torch.distributed as dist
from torch import nn

from rae.accelerator import Accelerator
from rae.experiments.image_store import to_uint8
from rae.experiments.sample import LABEL_MODES, sample_generator, sample_inputs
from rae.hub import resolve
from rae.metrics.evaluate import load_reference
from rae.metrics.frechet import GaussianStats, frechet_distance
from rae.metrics.inception import InceptionV3
from rae.registry import EVALUATIONS
from rae.sampling.base import Sampler
from rae.sampling.guidance import Guidance, NoGuidance
from rae.transport.transport import Transport

MODEL_NAMES = ("ema", "model")


@EVALUATIONS.register("online_fid")
class OnlineFID(nn.Module):
    """FID of freshly sampled images against ``reference`` (an ADM ``.npz``: images or mu/sigma).

    Args:
      reference: the reference batch (e.g. ``VIRTUAL_imagenet256_labeled.npz``; hub paths work).
      sampler, guidance: how samples are drawn (the release: ODE Euler 50, CFG scale 1.0).
      every: steps between evaluations; at_start: also evaluate before the first step.
      num_samples: images per evaluation; labels: "equal" (num_samples / classes each) or "random".
      batch_size: samples per forward pass on each rank.
      models: which models to score: "ema" and/or "model" (the live weights).
      inception_weights: the FID Inception's weights file (default: torch.hub's cache).
    """

    def __init__(
        self,
        reference: str,
        sampler: Sampler,
        guidance: Guidance | None = None,
        every: int = 25000,
        at_start: bool = True,
        num_samples: int = 50000,
        labels: str = "equal",
        batch_size: int = 64,
        models: Sequence[str] = MODEL_NAMES,
        inception_weights: str | None = None,
    ) -> None:
        super().__init__()
        if every < 1 or num_samples < 2 or batch_size < 1:
            raise ValueError(f"online_fid: every {every}, num_samples {num_samples}, batch_size {batch_size}: "
                             "expected every >= 1, num_samples >= 2 (a covariance needs two) and batch_size >= 1")
        if labels not in LABEL_MODES:
            raise ValueError(f"online_fid.labels must be one of {LABEL_MODES}, got {labels!r}")
        unknown = sorted(set(models) - set(MODEL_NAMES))
        if unknown or not models:
            raise ValueError(f"online_fid.models {list(models)}: expected a non-empty list of {MODEL_NAMES}")
        self.reference = reference
        self.sampler = sampler
        self.guidance = guidance if guidance is not None else NoGuidance()
        self.every = every
        self.at_start = at_start
        self.num_samples = num_samples
        self.labels = labels
        self.batch_size = batch_size
        self.model_names = tuple(models)
        self.inception = InceptionV3(weights_path=inception_weights)
        self._reference_stats: GaussianStats | None = None

    def due(self, step: int) -> bool:
        """Whether to evaluate after ``step`` optimiser steps."""
        return step % self.every == 0 and (step > 0 or self.at_start)

    @torch.no_grad()
    def evaluate(self, models: dict[str, nn.Module], autoencoder: nn.Module, transport: Transport,
                 acc: Accelerator, seed: int, log: logging.Logger) -> dict[str, float]:
        """``{"fid_<name>": score}`` on the main rank (empty elsewhere); every rank samples its share."""
        scores = {}
        for name in self.model_names:
            model = models[name]
            was_training = model.training
            model.eval()  # no label dropout while sampling
            stats = self._sample_stats(model, autoencoder, transport, acc, seed)
            model.train(was_training)
            if acc.is_main:
                scores[f"fid_{name}"] = frechet_distance(stats, self._reference(acc))
                log.info("online FID of the %s model on %d samples: %.4f", name, self.num_samples,
                         scores[f"fid_{name}"])
        return scores

    def _sample_stats(self, model: nn.Module, autoencoder: nn.Module, transport: Transport, acc: Accelerator,
                      seed: int) -> GaussianStats:
        """Mean and covariance of the pool features of all ranks' samples (sums all-reduced in float64)."""
        num_classes = model.num_classes
        velocity = self.guidance.velocity_fn(model, to_velocity=transport.velocity, num_classes=num_classes)
        inception = self.inception.to(acc.device)
        mine = list(range(acc.rank, self.num_samples, acc.world_size))
        latent_shape = tuple(model.latent_shape)
        dim = inception.fc.weight.shape[1]  # pool3 width; zeros of the full shape, so a rank with no share reduces
        sums = [torch.zeros(shape, dtype=torch.float64, device=acc.device) for shape in ((), (dim,), (dim, dim))]
        for start in range(0, len(mine), self.batch_size):
            indices = mine[start:start + self.batch_size]
            noise, labels = sample_inputs(seed, indices, latent_shape, num_classes, self.labels)
            with acc.autocast():
                latents = self.sampler.sample(velocity, noise.to(acc.device), labels.to(acc.device),
                                              generator=sample_generator(seed, indices[0]), path=transport.path)
                images = autoencoder.decode(latents).float()
            pool = inception(to_uint8(images)).pool.double()
            sums = [sums[0] + pool.shape[0], sums[1] + pool.sum(0), sums[2] + pool.T @ pool]
        if acc.distributed:
            for part in sums:
                dist.all_reduce(part)
        count, total, outer = (part.cpu() for part in sums)
        mu = total / count
        sigma = (outer - count * torch.outer(mu, mu)) / (count - 1)
        return GaussianStats(mu=mu.numpy(), sigma=sigma.numpy())

    def _reference(self, acc: Accelerator) -> GaussianStats:
        """The reference's pool statistics, read once (precomputed mu/sigma, or features of its images)."""
        if self._reference_stats is None:
            path = resolve(self.reference, "online_fid.reference")
            self._reference_stats = load_reference(path, self.inception, self.batch_size, acc.device).pool
        return self._reference_stats
