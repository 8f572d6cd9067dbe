"""Datasets yielding (image in [0, 1], label), and a deterministic, resumable data loader."""
from rae.data import embedded, image_folder, latent_cache, transforms  # noqa: F401  (registers the datasets, crops)
