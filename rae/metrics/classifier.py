"""A judge for samples of the embedded dataset, offline: a small CNN that reads an image's shape and its
colour family apart, and the scores it gives (class accuracy, Fréchet distance in its feature space).

Every embedded class is one shape in one colour family, so a classifier trained on the plain images
could name a class from its colour alone and pass a blob of the right hue. This one has two heads,
trained on images whose shape is drawn independently of their colour (`ShapeSwaps`): a sample counts
as its class only when the shape head and the colour head both give its label.
"""
from __future__ import annotations

import logging
from typing import Iterable, NamedTuple

import numpy as np
import torch
from torch import nn

from rae.data.embedded import EmbeddedDataset
from rae.metrics.frechet import GaussianStats, frechet_distance
from rae.registry import EVALUATIONS
from rae.weights import Pretrained, load_state_dict_file


class Judgement(NamedTuple):
    """Per image: penultimate features (for the Fréchet distance) and both heads' logits."""

    features: torch.Tensor
    shape_logits: torch.Tensor
    colour_logits: torch.Tensor


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU())


@EVALUATIONS.register("embedded_classifier")
class EmbeddedClassifier(nn.Module, Pretrained):
    """Images in [0, 1] (B, 3, R, R) -> `Judgement`: four 3x3 convolutions (strides 1, 2, 2, 2) with batch
    norm, max pooling over positions (the shape sits anywhere) to ``8 * width`` features, a shape head
    and a colour head of ``num_classes`` each.

    ``weights``: the ``classifier.pt`` that experiment ``classifier`` writes, read by ``load_pretrained``.
    """

    def __init__(self, num_classes: int = 10, width: int = 16, weights: str | None = None) -> None:
        super().__init__()
        if num_classes < 2 or width < 1:
            raise ValueError(f"embedded_classifier: num_classes {num_classes} must be >= 2 and width {width} >= 1")
        self.num_classes = num_classes
        self.weights = weights
        self.trunk = nn.Sequential(_conv(3, width, 1), _conv(width, 2 * width, 2), _conv(2 * width, 4 * width, 2),
                                   _conv(4 * width, 8 * width, 2))
        self.shape_head = nn.Linear(8 * width, num_classes)
        self.colour_head = nn.Linear(8 * width, num_classes)

    def forward(self, images: torch.Tensor) -> Judgement:
        features = self.trunk(images * 2 - 1).amax(dim=(2, 3))
        return Judgement(features, self.shape_head(features), self.colour_head(features))

    def load_pretrained(self, allow_random: bool, log: logging.Logger) -> None:
        """The state dict ``weights`` (experiment ``classifier``'s ``classifier.pt``)."""
        load_state_dict_file(self, self.weights, "the embedded classifier", "embedded_classifier.weights",
                             "Run the classifier experiment (experiments/quickstart.gin's classifier stage) and set "
                             "embedded_classifier.weights to its classifier.pt", allow_random, log)


class ShapeSwaps(torch.utils.data.Dataset):
    """The images of an embedded dataset, a ``swap`` share of them drawn with a shape picked uniformly at
    random (``swap = 1``: shape and colour independent); each item is (image, tensor([shape, colour
    family])), a pure function of (dataset seed, index)."""

    def __init__(self, data: EmbeddedDataset, swap: float = 1.0) -> None:
        if not 0 <= swap <= 1:
            raise ValueError(f"classifier.swap = {swap}: expected a share in [0, 1]")
        self.data = data
        self.swap = swap
        self.num_classes = data.num_classes
        self.resolution = data.resolution
        self.size = data.size

    def __len__(self) -> int:
        return len(self.data)

    def shape_of(self, index: int) -> int:
        """The shape drawn in image ``index``: its class's, or with probability ``swap`` a uniformly drawn one."""
        rng = np.random.default_rng([self.data.seed, index, 1])
        return int(rng.integers(self.num_classes)) if rng.random() < self.swap else self.data.label(index)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        shapes = [self.shape_of(i) for i in indices]
        images = self.data.images(indices, shapes)
        return [(image, torch.tensor([shape, self.data.label(i)])) for image, shape, i in zip(images, shapes, indices)]


@torch.no_grad()
def judge(classifier: EmbeddedClassifier, batches: Iterable[torch.Tensor], device: torch.device | str) -> Judgement:
    """The classifier over batches of images (float in [0, 1] or uint8 NHWC, as in a samples ``.npz``)."""
    parts = []
    for batch in batches:
        images = torch.as_tensor(batch)
        if images.dtype == torch.uint8:
            images = images.permute(0, 3, 1, 2).float() / 255
        parts.append(Judgement(*(t.float().cpu() for t in classifier(images.to(device)))))
    if not parts:
        raise ValueError("no images to classify")
    return Judgement(*(torch.cat(ts) for ts in zip(*parts)))


def class_scores(judgement: Judgement, labels: torch.Tensor, prefix: str = "") -> dict[str, float]:
    """Shares of images whose shape, colour, and both (``class_accuracy``) the classifier names as ``labels``."""
    shape = judgement.shape_logits.argmax(1) == labels
    colour = judgement.colour_logits.argmax(1) == labels
    return {f"{prefix}class_accuracy": (shape & colour).float().mean().item(),
            f"{prefix}shape_accuracy": shape.float().mean().item(),
            f"{prefix}colour_accuracy": colour.float().mean().item()}


def classifier_frechet(samples: torch.Tensor, real: torch.Tensor) -> dict[str, float]:
    """Fréchet distance of ``samples``' features to the first half of ``real``'s, and its floor: the
    distance between the two disjoint halves of ``real``, each as large as the samples (the value
    perfect samples would get on average, finite-sample bias included)."""
    n = samples.shape[0]
    if real.shape[0] < 2 * n:
        raise ValueError(f"the Fréchet floor needs two disjoint halves of {n} real images (as many as samples); "
                         f"got {real.shape[0]} held-out images: make eval's held_out set at least {2 * n}")
    first, second = GaussianStats.of(real[:n]), GaussianStats.of(real[n:2 * n])
    return {"classifier_fd": frechet_distance(GaussianStats.of(samples), first),
            "classifier_fd_floor": frechet_distance(second, first)}
