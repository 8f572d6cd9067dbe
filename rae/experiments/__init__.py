"""Experiments: the units the runner executes (latent_stats, stage1, stage2, sample, eval, ...)."""
from rae.experiments import cache_latents, latent_stats, pipeline, reconstruct, sample, score, stage1, stage2  # noqa: F401
