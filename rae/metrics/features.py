"""The feature-extractor interface and batched extraction over images or ``.npz`` sample files."""
from __future__ import annotations

import abc
import zipfile
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np
import torch
from torch import nn


_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


class InceptionFeatures(NamedTuple):
    """Per image: pool3 features (FID, precision/recall), spatial features (sFID), logits (IS)."""

    pool: torch.Tensor
    spatial: torch.Tensor
    logits: torch.Tensor


class FeatureExtractor(nn.Module, abc.ABC):
    """uint8 images (B, 3, H, W) in [0, 255] -> `InceptionFeatures`; tests inject tiny ones."""

    @abc.abstractmethod
    def forward(self, images: torch.Tensor) -> InceptionFeatures:
        """Features of one batch; the extractor resizes and normalises as it needs."""


@torch.no_grad()
def extract_features(
    extractor: FeatureExtractor, batches: Iterable[np.ndarray | torch.Tensor], device: torch.device | str = "cpu"
) -> InceptionFeatures:
    """Run ``extractor`` over batches of uint8 NHWC images; concatenated float32 features on the CPU."""
    parts: list[InceptionFeatures] = []
    for batch in batches:
        images = torch.as_tensor(batch)
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"expected uint8 NHWC images with 3 channels, got {images.dtype} {tuple(images.shape)}"
            )
        out = extractor(images.to(device).permute(0, 3, 1, 2))
        parts.append(InceptionFeatures(*(f.float().cpu() for f in out)))
    if not parts:
        raise ValueError("no images to extract features from")
    return InceptionFeatures(*(torch.cat(fs) for fs in zip(*parts)))


def npz_keys(path: str | Path) -> list[str]:
    """Array names in an ``.npz`` file, without reading any array."""
    with zipfile.ZipFile(path) as zf:
        return [name.removesuffix(".npy") for name in zf.namelist()]


def iterate_npz_images(path: str | Path, batch_size: int, key: str = "arr_0") -> Iterator[np.ndarray]:
    """Batches of ``key`` (uint8 NHWC images) streamed from an ``.npz`` without loading it whole.

    A 50k-sample 256-px file holds ~10 GB of pixels; reading it in batches keeps
    memory flat, as ADM's evaluator does.
    """
    with zipfile.ZipFile(path) as zf:
        name = f"{key}.npy"
        if name not in zf.namelist():
            raise ValueError(f"{path} has no array {key!r}; it holds {npz_keys(path)}")
        with zf.open(name) as f:
            version = np.lib.format.read_magic(f)
            if version not in _HEADER_READERS:
                raise ValueError(f"{path}:{key} uses .npy format {version}; expected one of {sorted(_HEADER_READERS)}")
            shape, fortran, dtype = _HEADER_READERS[version](f)
            if fortran or dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
                raise ValueError(
                    f"{path}:{key} must be C-ordered uint8 images (N, H, W, 3), got {dtype} {shape}"
                    f"{' in Fortran order' if fortran else ''}"
                )
            per_image = int(np.prod(shape[1:]))
            for start in range(0, shape[0], batch_size):
                count = min(batch_size, shape[0] - start)
                data = f.read(count * per_image)
                if len(data) != count * per_image:
                    raise ValueError(f"{path}:{key} is truncated at image {start}")
                yield np.frombuffer(bytearray(data), dtype=np.uint8).reshape(count, *shape[1:])
