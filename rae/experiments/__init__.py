"""Experiments: the units the runner executes (latent_stats, stage1, stage2, sample, eval, ...)."""
from rae.experiments import latent_stats  # noqa: F401
