"""The eval experiment: ADM's metrics (FID, sFID, IS, precision, recall) of a samples ``.npz``
against a reference ``.npz``, in PyTorch (no TensorFlow), logged with their split and guidance;
and, for the embedded dataset, the scores of a trained judge (`rae.metrics.classifier`).

ADM's metrics are computed only with the real Inception weights: a random Inception's numbers
look like results and mean nothing, so without the weights (when random weights are allowed) they
are left out of the log, the summary, ``metrics.json`` and the tracker, and a line says which file
is missing and where it belongs.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rae.data.base import LabelledImages
from rae.experiments.base import Experiment, RunContext
from rae.experiments.image_store import to_uint8
from rae.hub import resolve
from rae.io import atomic_write_json
from rae.metrics.evaluate import (
    Reference,
    features_of_npz,
    load_reference,
    sample_metrics,
)
from rae.metrics.classifier import EmbeddedClassifier, class_scores, classifier_frechet, judge
from rae.metrics.features import extract_features, iterate_npz_images
from rae.metrics.frechet import GaussianStats
from rae.metrics.inception import WEIGHTS_URL, InceptionV3
from rae.registry import EXPERIMENTS
from rae.weights import load_pretrained_weights

METRICS_FILE = "metrics.json"


def describe_reference(reference: str | os.PathLike | LabelledImages) -> str:
    """What metrics.json names as the reference: a file's path, or a dataset's class, size and resolution."""
    if isinstance(reference, (str, os.PathLike)):
        return os.fspath(reference)
    return (f"{type(reference).__name__}: {len(reference)} images of {reference.resolution}px, "
            f"{reference.num_classes} classes")


@EXPERIMENTS.register("eval")
class Evaluate(Experiment):
    """Score ``samples`` (uint8 NHWC ``arr_0``) against ``reference``: an ADM reference batch (images
    ``arr_0`` and/or statistics ``mu, sigma, mu_s, sigma_s``) or a dataset (e.g. the training data).

    ``split`` and ``guidance`` become the metrics' context, so runs line up in the Aim UI
    (e.g. ``fid{split=val, guidance=cfg-1.5}``); ``prefix`` "r" reports reconstructions as rFID.
    ``inception_weights``: torch-fidelity's ``pt_inception-2015-12-05`` file (default: its cache).

    ``classifier`` (an `EmbeddedClassifier` with trained weights) adds its judgement of the samples:
    ``class_accuracy`` (shape and colour both named as the sample's label, from the npz's ``arr_1``),
    ``shape_accuracy``, ``colour_accuracy``, and ``classifier_fd``, the Fréchet distance of the samples'
    classifier features to ``held_out`` real images, beside ``classifier_fd_floor``, the same distance
    between two disjoint halves of them (``held_out`` needs twice as many images as there are samples),
    and the classifier's own accuracy on them (``real_class_accuracy``).
    """

    kind = "eval"

    def __init__(
        self,
        samples: str | os.PathLike,
        reference: str | os.PathLike | LabelledImages,
        split: str = "val",
        guidance: str = "none",
        prefix: str = "",
        batch_size: int = 64,
        inception_weights: str | None = None,
        classifier: EmbeddedClassifier | None = None,
        held_out: LabelledImages | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"eval.batch_size must be positive, got {batch_size}")
        if (classifier is None) != (held_out is None):
            raise ValueError("eval.classifier and eval.held_out go together: the classifier's Fréchet distance "
                             "compares the samples with held-out real images")
        self.samples = samples
        self.reference = reference
        self.context = {"split": split, "guidance": guidance}
        self.prefix = prefix
        self.batch_size = batch_size
        self.inception = InceptionV3(weights_path=inception_weights)
        self.classifier = classifier
        self.held_out = held_out
        self.inception_missing: Path | None = None

    def models(self) -> dict[str, nn.Module]:
        return {"inception": self.inception} | ({"classifier": self.classifier} if self.classifier else {})

    def load_weights(self, allow_random: bool, log: logging.Logger) -> None:
        """The Inception's weights, or (random weights allowed) none and no Inception metrics; the classifier's,
        always (a random judge's verdicts mean nothing either)."""
        path = self.inception.weights_file()
        if path.is_file() or self.inception.download or not allow_random:
            load_pretrained_weights(self.inception, allow_random=allow_random, log=log)
        else:
            self.inception_missing = path
            log.warning("eval: no FID Inception weights at %s, so no FID, sFID, IS, precision or recall (a random "
                        "Inception's numbers mean nothing): put %s there (from %s), or set eval.inception_weights",
                        path, path.name, WEIGHTS_URL)
        if self.classifier is not None:
            load_pretrained_weights(self.classifier, allow_random=False, log=log)

    def run(self, ctx: RunContext) -> dict[str, Any]:
        acc = ctx.accelerator
        use_inception = self.inception_missing is None
        files = [("eval.samples", self.samples)]
        reference_file = isinstance(self.reference, (str, os.PathLike))
        if reference_file and use_inception:
            files.append(("eval.reference", resolve(self.reference, "eval.reference")))
        for binding, path in files:
            if not Path(path).is_file():
                raise FileNotFoundError(f"{binding}: no such file {os.fspath(path)}; expected an ADM-style .npz "
                                        "(uint8 NHWC arr_0; a reference may hold mu, sigma, mu_s, sigma_s instead)")
        metrics: dict[str, Any] = {}
        notes = {} if use_inception else {"inception_weights_missing": str(self.inception_missing)}
        if acc.is_main:  # one pass over two files: the other ranks have nothing to share
            if use_inception:
                metrics |= self._inception_metrics(files[1][1] if reference_file else self.reference, acc.device)
            if self.classifier is not None:
                metrics |= self._classifier_metrics(acc.device)
            for name, value in metrics.items():
                ctx.tracker.track(name, value, step=0, context=self.context)
            atomic_write_json(ctx.run_dir / METRICS_FILE, {
                "samples": os.fspath(self.samples), "reference": describe_reference(self.reference),
                **self.context, **notes, **metrics})
            for name, value in metrics.items():
                ctx.log.info("eval: %s = %.4f", name, value)
        acc.barrier()
        return notes | metrics

    def _inception_metrics(self, reference: Path | LabelledImages, device: Any) -> dict[str, float]:
        inception = self.inception.to(device).eval()
        scores = sample_metrics(features_of_npz(self.samples, inception, self.batch_size, device),
                                self._reference(reference, inception, device), device=device)
        return {f"{self.prefix}{name}": value for name, value in scores.items()}

    def _classifier_metrics(self, device: Any) -> dict[str, float]:
        """The judge's verdict on the samples (labels from ``arr_1``) and on the held-out real images."""
        with np.load(self.samples) as data:
            if "arr_1" not in data:
                raise ValueError(f"eval.samples {os.fspath(self.samples)} has no labels (arr_1): the class accuracy "
                                 "needs them (the sample experiment writes them)")
            labels = torch.from_numpy(data["arr_1"]).long()
        classifier = self.classifier.to(device).eval()
        samples = judge(classifier, iterate_npz_images(self.samples, self.batch_size), device)
        batches = list(_labelled_uint8_batches(self.held_out, self.batch_size))
        real = judge(classifier, (images for images, _ in batches), device)
        real_labels = torch.cat([labels for _, labels in batches])
        return (class_scores(samples, labels) | classifier_frechet(samples.features, real.features)
                | class_scores(real, real_labels, prefix="real_"))

    def _reference(self, reference: Path | LabelledImages, inception: InceptionV3, device: Any) -> Reference:
        if isinstance(reference, Path):
            return load_reference(reference, inception, self.batch_size, device)
        features = extract_features(inception, _uint8_batches(reference, self.batch_size), device)
        return Reference(GaussianStats.of(features.pool), GaussianStats.of(features.spatial), features.pool)


def _uint8_batches(dataset: LabelledImages, batch_size: int) -> Any:
    """A dataset's images in [0, 1] as uint8 NHWC batches, quantised as samples are (`to_uint8`: truncation)."""
    return (images for images, _ in _labelled_uint8_batches(dataset, batch_size))


def _labelled_uint8_batches(dataset: LabelledImages, batch_size: int) -> Any:
    """(uint8 NHWC images, labels) batches of a dataset, the images as `_uint8_batches` gives them."""
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        images = torch.stack([image for image, _ in items])
        yield to_uint8(images).permute(0, 2, 3, 1), torch.tensor([int(label) for _, label in items])
