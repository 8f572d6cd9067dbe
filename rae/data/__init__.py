"""Datasets yielding (image in [0, 1], label), and a deterministic, resumable data loader."""
from rae.data import (  # noqa: F401  (registers the datasets, crops)
    coco_features, embedded, embedded_captions, image_folder, latent_cache, transforms,
)
