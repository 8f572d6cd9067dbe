"""Trainable decoders that map an encoder's latents back to pixels."""
from rae.decoders import vit  # noqa: F401  (registers @decoder.vit)
