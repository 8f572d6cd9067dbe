"""`trace`: where the loop loses what the judge looks for, link by link, on held-out real images.

The class accuracy of samples says how far the whole loop is from the data, not which link
loses it. This stage scores, with the same judge and the same held-out images:
  real             the images themselves (the judge's own ceiling);
  reconstruction   encode -> decode (what stage 1 keeps);
  latent_noise     decode(normalised latents + sigma * N(0, I)) for each ``latent_noise`` sigma
                   (how much latent error the decoder tolerates: stage 2's samples are never exact);
  from_t           the latents noised to time t on the transport's path (x_t = alpha_t z + sigma_t
                   eps), then the sample stage's own sampler, guidance and stage-2 weights from t to
                   data, decoded (how much stage 2 keeps when it only has to finish an image; t = 1
                   is plain sampling).
The shares are logged to the tracker with the link as context and written to ``metrics.json``.
"""
from __future__ import annotations

import functools
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from rae.conditions import sample_generator
from rae.data.base import LabelledImages
from rae.experiments.base import Experiment, RunContext
from rae.experiments.image_store import to_uint8
from rae.experiments.sample import Sample
from rae.io import atomic_write_json
from rae.metrics.classifier import EmbeddedClassifier, class_scores, judge
from rae.registry import EXPERIMENTS
from rae.sampling.base import Problem, VelocityFn
from rae.sampling.time_grid import resolve_shift, time_grid
from rae.transport.shift import unshift_time
from rae.weights import load_pretrained_weights

METRICS_FILE = "metrics.json"


@EXPERIMENTS.register("trace")
class Trace(Experiment):
    """The judge's class accuracy after each link of the loop, on the first ``num_images`` of ``held_out``.

    Args:
      sample: the sample stage's experiment (its backbone, weights, autoencoder, transport, sampler
        and guidance are the ones traced).
      classifier: the judge (an `EmbeddedClassifier` with trained weights); held_out: labelled real
        images, none of them a training image.
      latent_noise: sigmas of the Gaussian noise added to the normalised latents before decoding.
      starts: times t in (0, 1] from which stage 2 finishes the noised latents of the real images.
    """

    kind = "trace"

    def __init__(self, sample: Sample, classifier: EmbeddedClassifier, held_out: LabelledImages,
                 num_images: int = 200, latent_noise: Sequence[float] = (0.1, 0.3),
                 starts: Sequence[float] = (0.25, 0.5, 0.75), batch_size: int = 100) -> None:
        if num_images < 1 or batch_size < 1:
            raise ValueError(f"trace.num_images {num_images} and trace.batch_size {batch_size} must be positive")
        if any(sigma < 0 for sigma in latent_noise):
            raise ValueError(f"trace.latent_noise {tuple(latent_noise)}: expected sigmas >= 0")
        if any(not 0 < t <= 1 for t in starts):
            raise ValueError(f"trace.starts {tuple(starts)}: expected times in (0, 1] (1 is plain sampling)")
        if sample.captions is not None:
            raise ValueError("trace.sample samples from captions; the trace finishes images of a class-conditional "
                             "backbone from their labels (leave sample.captions unset)")
        if len(held_out) < num_images:
            raise ValueError(f"trace.held_out has {len(held_out)} images; trace.num_images asks for {num_images}")
        self.sample, self.classifier, self.held_out = sample, classifier, held_out
        self.num_images, self.batch_size = num_images, batch_size
        self.latent_noise, self.starts = tuple(latent_noise), tuple(starts)

    def models(self) -> dict[str, nn.Module]:
        return self.sample.models() | {"classifier": self.classifier}

    def latent_shape(self) -> tuple[int, ...]:
        return self.sample.latent_shape()

    def load_weights(self, allow_random: bool, log: Any) -> None:
        self.sample.load_weights(allow_random, log)
        load_pretrained_weights(self.classifier, allow_random=False, log=log)

    @torch.no_grad()
    def run(self, ctx: RunContext) -> dict[str, Any]:
        metrics: dict[str, float] = {}
        if ctx.accelerator.is_main:  # a few hundred images: one rank is enough
            metrics = self.accuracies(ctx.accelerator.device, ctx.seed)
            for name, value in metrics.items():
                ctx.tracker.track("class_accuracy", value, step=0, context={"link": name})
                ctx.log.info("trace: class accuracy after %s = %.3f", name, value)
            atomic_write_json(ctx.run_dir / METRICS_FILE, metrics)
        ctx.accelerator.barrier()
        return {f"class_accuracy_after_{name}": value for name, value in metrics.items()}

    def accuracies(self, device: torch.device, seed: int) -> dict[str, float]:
        """{link: class accuracy} for every link, in the loop's order; the images are quantised to uint8 first,
        as samples are stored and eval judges them."""
        classifier = self.classifier.to(device).eval()
        labels = self._held_out[1]

        def stored(batch: torch.Tensor) -> torch.Tensor:
            return to_uint8(batch.cpu(), self.sample.quantize).permute(0, 2, 3, 1)

        return {name: class_scores(judge(classifier, map(stored, batches), device), labels)["class_accuracy"]
                for name, batches in self.links(device, seed)}

    def links(self, device: torch.device, seed: int) -> Iterator[tuple[str, list[torch.Tensor]]]:
        """(link, batches of images in [0, 1]) for every link, in the loop's order; drawn from ``seed``."""
        images, labels = self._held_out
        autoencoder = self.sample.autoencoder.to(device).eval()
        generator = sample_generator(seed, 0)

        def decoded(latents: list[torch.Tensor]) -> list[torch.Tensor]:
            return [autoencoder.decode(z.to(device)).float().clamp(0, 1) for z in latents]

        latents = [autoencoder.encode(batch.to(device)) for batch in images]
        yield "real", images
        yield "reconstruction", decoded(latents)
        for sigma in self.latent_noise:
            yield f"latent_noise_{sigma:g}", decoded([z + sigma * torch.randn(z.shape, generator=generator).to(z)
                                                      for z in latents])
        velocity = self.sample.velocity(self.sample.conditions(seed), device)
        for t in self.starts:
            yield f"from_t_{t:g}", decoded(self._finish(latents, labels, t, velocity, generator, device))

    @functools.cached_property
    def _held_out(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The first ``num_images`` held-out images in batches, and their labels (rendered once)."""
        items = [self.held_out[i] for i in range(self.num_images)]
        images = torch.stack([image for image, _ in items])
        labels = torch.tensor([int(label) for _, label in items])
        return list(images.split(self.batch_size)), labels

    def _finish(self, latents: list[torch.Tensor], labels: torch.Tensor, t: float, velocity: VelocityFn,
                generator: torch.Generator, device: torch.device) -> list[torch.Tensor]:
        """The latents noised to time ``t``, then the sample stage's sampler (on ``velocity``) from ``t`` to data."""
        sample, path = self.sample, self.sample.transport.path
        shape = tuple(latents[0].shape[1:])
        shift = resolve_shift(sample.sampler.shift, shape)
        start = float(unshift_time(torch.tensor(t, dtype=torch.float64), shift))
        grid = time_grid(sample.sampler.num_steps, shift, start, sample.sampler.end)
        finished = []
        for z, y in zip(latents, labels.split(self.batch_size)):
            alpha, sigma, _, _ = path.coefficients(torch.full((z.shape[0], 1, 1, 1), float(grid[0]), device=device))
            x = alpha * z + sigma * torch.randn(z.shape, generator=generator).to(z)
            problem = Problem(velocity, y.to(device), generator, path)
            finished.append(sample.sampler.solve(problem, x, grid))
        return finished
