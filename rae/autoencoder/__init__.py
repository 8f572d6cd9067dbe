"""Representation autoencoders: a frozen encoder, a trained decoder, latent noise and normalisation."""
from rae.autoencoder import rae  # noqa: F401  (registers @autoencoder.rae)
