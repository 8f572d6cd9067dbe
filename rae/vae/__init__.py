"""Stage-1 autoencoders from outside RAE: the Stable Diffusion VAE of REPA (optional extra `rae[vae]`)."""
from rae.vae import sd_vae  # noqa: F401  (registers @autoencoder.sd_vae)
