"""Experiments: the units the runner executes (latent_stats, stage1, stage2, sample, eval, ...)."""
from rae.experiments import (  # noqa: F401
    cache_latents, classifier, image_tools, latent_stats, online_fid, pipeline, preprocess_t2i, pretrain_encoder,
    reconstruct, sample, score, stage1, stage2, trace,
)
