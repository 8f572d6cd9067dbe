"""Frozen representation encoders: images in [0, 1] -> patch tokens (B, N, C); and CLIP's text tower for captions."""
from rae.encoders import clip, clip_text, dinov1, dinov2, ijepa, mae, mocov3, siglip2, tiny_vit  # noqa: F401  (registers the encoders)
from rae.encoders.tokens import latent_to_tokens, tokens_to_latent

__all__ = ["latent_to_tokens", "tokens_to_latent"]
