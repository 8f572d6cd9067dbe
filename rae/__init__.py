"""rae: latent diffusion with representation autoencoders (RAE) and representation alignment (REPA)."""

__version__ = "0.1.0"
