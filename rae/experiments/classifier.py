"""`classifier`: train the embedded dataset's judge (`EmbeddedClassifier`), whose scores the eval stage
reports for samples: class accuracy and a Fréchet distance in its feature space (`rae.metrics.classifier`)."""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from rae.data.embedded import EmbeddedDataset
from rae.experiments.base import RunContext
from rae.experiments.small_training import SmallTraining
from rae.metrics.classifier import EmbeddedClassifier, ShapeSwaps, class_scores, judge
from rae.registry import EXPERIMENTS
from rae.train.options import OptimOptions

CLASSIFIER_FILE = "classifier.pt"
CLASSIFIER_OPTIM = OptimOptions(lr=3e-3, weight_decay=1e-4, lr_schedule="cosine", warmup_steps=20, final_lr=1e-4,
                                grad_clip=None, checkpoint_every=300)


@EXPERIMENTS.register("classifier")
class TrainClassifier(SmallTraining):
    """Cross-entropy of both heads on ``dataset``'s images, a ``swap`` share drawn with a random shape.

    Args:
      classifier: the `EmbeddedClassifier` to train (from its initialisation).
      dataset: the embedded training images; held_out: embedded images it never sees, on which its
        accuracy is measured at the end (``real_class_accuracy``: how far its judgement of samples
        can be trusted).
      swap: share of training images whose shape is drawn uniformly at random (their colour stays their
        class's); 1, the default, makes shape and colour independent, so neither head can read the other.
      batch_size, total_steps, optim (default ``CLASSIFIER_OPTIM``), log_every, num_workers: as
        `pretrain_encoder`.
    """

    kind = "classifier"
    output = CLASSIFIER_FILE

    def __init__(self, classifier: EmbeddedClassifier, dataset: EmbeddedDataset,
                 held_out: EmbeddedDataset | None = None, swap: float = 1.0, batch_size: int = 64,
                 total_steps: int = 600, optim: OptimOptions | None = None, log_every: int = 50,
                 num_workers: int = 0) -> None:
        if not isinstance(dataset, EmbeddedDataset):
            raise ValueError(f"classifier.dataset must be @dataset.embedded() (it renders swapped shapes), got "
                             f"{type(dataset).__name__}")
        if dataset.num_classes != classifier.num_classes:
            raise ValueError(f"classifier: the dataset has {dataset.num_classes} classes, the classifier "
                             f"{classifier.num_classes} (embedded_classifier.num_classes)")
        optim = optim or dataclasses.replace(CLASSIFIER_OPTIM)
        super().__init__(ShapeSwaps(dataset, swap), batch_size, total_steps, optim, log_every, num_workers)
        self.classifier = classifier
        self.held_out = held_out

    def models(self) -> dict[str, nn.Module]:
        return {"classifier": self.classifier}

    def trainable(self) -> nn.Module:
        return self.classifier.train()

    def weights_state(self) -> dict[str, torch.Tensor]:
        return self.classifier.state_dict()

    def loss(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        judgement = self.classifier(images)
        shape, colour = targets[:, 0], targets[:, 1]
        loss = F.cross_entropy(judgement.shape_logits.float(), shape) + F.cross_entropy(
            judgement.colour_logits.float(), colour)
        both = (judgement.shape_logits.argmax(1) == shape) & (judgement.colour_logits.argmax(1) == colour)
        return loss, {"accuracy": both.float().mean()}

    def finish(self, ctx: RunContext) -> dict[str, Any]:
        """Its accuracy on the held-out images, logged and returned."""
        if self.held_out is None:
            return {}
        classifier = self.classifier.eval()
        batches = (self.held_out.images(range(s, min(s + 256, len(self.held_out))))
                   for s in range(0, len(self.held_out), 256))
        labels = torch.tensor([self.held_out.label(i) for i in range(len(self.held_out))])
        scores = class_scores(judge(classifier, batches, ctx.accelerator.device), labels, prefix="real_")
        for name, value in scores.items():
            ctx.tracker.track(name, value, self.total_steps, {"subset": "held_out"})
        ctx.log.info("classifier: on %d held-out images %s", len(self.held_out),
                     ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        return scores
