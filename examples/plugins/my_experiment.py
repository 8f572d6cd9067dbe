"""An experiment plugin: a unit of work the runner builds from gin and runs with a context.

Subclass `rae.experiments.base.Experiment`: set ``kind`` (the tracker run's name and tag), take the
models and settings as constructor arguments (gin builds them), and implement ``run(ctx)``, which
returns a summary for the runner to print. ``models()`` names the models for ``--dry_run``'s
parameter counts and for weight loading (``load_weights`` loads every pretrained part before
``run``); ``latent_shape()`` and ``check(world_size)`` (config-only checks, made before the run
folder exists) are optional. ``ctx`` holds the accelerator (device, rank, autocast), the tracker
(metrics to Aim), the run folder and the seed; under torchrun every rank runs ``run``.

    python tools/run.py --import examples/plugins/my_experiment.py --gin examples/plugins/my_experiment.gin
"""
from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

from rae.data.base import LabelledImages
from rae.experiments.base import Experiment, RunContext, check_positive
from rae.registry import EXPERIMENTS


@EXPERIMENTS.register("class_separation")
class ClassSeparation(Experiment):
    """How far apart an autoencoder's latents put the classes: the spread of the class means of the
    image latents (each averaged over positions) over the mean spread of the images around their class's."""

    kind = "class_separation"

    def __init__(self, autoencoder: nn.Module, dataset: LabelledImages, num_images: int = 32,
                 batch_size: int = 8) -> None:
        self.autoencoder = autoencoder
        self.dataset = dataset
        self.num_images = num_images
        self.batch_size = batch_size

    def models(self) -> dict[str, nn.Module]:
        return {"autoencoder": self.autoencoder}

    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.autoencoder.latent_shape)

    def check(self, world_size: int) -> None:
        check_positive("class_separation", num_images=self.num_images, batch_size=self.batch_size)

    def run(self, ctx: RunContext) -> dict[str, Any]:
        acc = ctx.accelerator
        if not acc.is_main:
            return {}  # one pass over a few images: rank 0 does it alone
        autoencoder = self.autoencoder.to(acc.device).eval()
        pooled, labels = [], []
        for start in range(0, self.num_images, self.batch_size):
            items = [self.dataset[i] for i in range(start, min(start + self.batch_size, self.num_images))]
            images = torch.stack([image for image, _ in items]).to(acc.device)
            with torch.inference_mode():
                pooled.append(autoencoder.encode(images).double().mean((2, 3)).cpu())  # (B, C)
            labels += [label for _, label in items]
        latents, classes = torch.cat(pooled), torch.tensor(labels)
        means = {c: latents[classes == c].mean(0) for c in sorted(set(labels))}
        within = torch.stack([(latents[i] - means[c]).square().sum() for i, c in enumerate(labels)]).mean()
        centre = torch.stack(list(means.values())).mean(0)
        between = torch.stack([(m - centre).square().sum() for m in means.values()]).mean()
        scores = {"within": within.item(), "between": between.item(), "separation": (between / within).item()}
        ctx.tracker.track_dict(scores, step=0)
        path = ctx.run_dir / "separation.json"
        path.write_text(json.dumps({"images": len(labels), "classes": len(means), **scores}, indent=1))
        return {"separation": scores["separation"], "file": str(path)}
