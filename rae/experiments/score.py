"""The eval experiment: ADM's metrics (FID, sFID, IS, precision, recall) of a samples ``.npz``
against a reference ``.npz``, in PyTorch (no TensorFlow), logged with their split and guidance."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rae.data.base import LabelledImages
from rae.experiments.base import Experiment, RunContext
from rae.experiments.image_store import to_uint8
from rae.hub import resolve
from rae.metrics.evaluate import (
    Reference,
    features_of_npz,
    load_reference,
    sample_metrics,
)
from rae.metrics.features import extract_features
from rae.metrics.frechet import GaussianStats
from rae.metrics.inception import InceptionV3
from rae.registry import EXPERIMENTS

METRICS_FILE = "metrics.json"


@EXPERIMENTS.register("eval")
class Evaluate(Experiment):
    """Score ``samples`` (uint8 NHWC ``arr_0``) against ``reference``: an ADM reference batch (images
    ``arr_0`` and/or statistics ``mu, sigma, mu_s, sigma_s``) or a dataset (e.g. the training data).

    ``split`` and ``guidance`` become the metrics' context, so runs line up in the Aim UI
    (e.g. ``fid{split=val, guidance=cfg-1.5}``); ``prefix`` "r" reports reconstructions as rFID.
    ``inception_weights``: torch-fidelity's ``pt_inception-2015-12-05`` file (default: its cache).
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
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"eval.batch_size must be positive, got {batch_size}")
        self.samples = samples
        self.reference = reference
        self.context = {"split": split, "guidance": guidance}
        self.prefix = prefix
        self.batch_size = batch_size
        self.inception = InceptionV3(weights_path=inception_weights)

    def models(self) -> dict[str, nn.Module]:
        return {"inception": self.inception}

    def run(self, ctx: RunContext) -> dict[str, Any]:
        acc = ctx.accelerator
        files = [("eval.samples", self.samples)]
        reference_file = isinstance(self.reference, (str, os.PathLike))
        if reference_file:
            files.append(("eval.reference", resolve(self.reference, "eval.reference")))
        for binding, path in files:
            if not Path(path).is_file():
                raise FileNotFoundError(f"{binding}: no such file {os.fspath(path)}; expected an ADM-style .npz "
                                        "(uint8 NHWC arr_0; a reference may hold mu, sigma, mu_s, sigma_s instead)")
        metrics: dict[str, Any] = {}
        if acc.is_main:  # one pass over two files: the other ranks have nothing to share
            inception = self.inception.to(acc.device).eval()
            reference = self._reference(files[1][1] if reference_file else self.reference, inception, acc.device)
            samples = features_of_npz(self.samples, inception, self.batch_size, acc.device)
            scores = sample_metrics(samples, reference, device=acc.device)
            metrics = {f"{self.prefix}{name}": value for name, value in scores.items()}
            for name, value in metrics.items():
                ctx.tracker.track(name, value, step=0, context=self.context)
            out = ctx.run_dir / METRICS_FILE
            tmp = out.with_name(out.name + ".tmp")
            tmp.write_text(json.dumps({"samples": os.fspath(self.samples), "reference": str(self.reference),
                                       **self.context, **metrics}, indent=1))
            os.replace(tmp, out)
            for name, value in metrics.items():
                ctx.log.info("eval: %s = %.4f", name, value)
        acc.barrier()
        return metrics

    def _reference(self, reference: Path | LabelledImages, inception: InceptionV3, device: Any) -> Reference:
        if isinstance(reference, Path):
            return load_reference(reference, inception, self.batch_size, device)
        features = extract_features(inception, _uint8_batches(reference, self.batch_size), device)
        return Reference(GaussianStats.of(features.pool), GaussianStats.of(features.spatial), features.pool)


def _uint8_batches(dataset: LabelledImages, batch_size: int) -> Any:
    """A dataset's images in [0, 1] as uint8 NHWC batches, quantised as samples are (`to_uint8`: truncation)."""
    for start in range(0, len(dataset), batch_size):
        images = torch.stack([dataset[i][0] for i in range(start, min(start + batch_size, len(dataset)))])
        yield to_uint8(images).permute(0, 2, 3, 1)
