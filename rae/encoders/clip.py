"""CLIP (Radford et al. 2021) ViT-L/14 vision tower: REPA's language-supervised target encoder."""
from __future__ import annotations

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from rae.encoders.hf import (
    PUBLISHED,
    TransformersEncoder,
    check_variant,
    fixed_normalisation,
    resolve,
    shipped_architecture,
    vision_part,
)
from rae.registry import ENCODERS

VARIANTS = ("large",)


@ENCODERS.register("clip")
class CLIP(TransformersEncoder):
    """Patch tokens of CLIP's last transformer layer: after ``ln_pre`` and the blocks, before ``ln_post``.

    REPA's ``clip-vit-L`` (``models/clip_vit.py``, ``UpdatedVisionTransformer``) drops the CLS
    token and never applies ``ln_post`` or the projection: transformers' ``last_hidden_state``
    is exactly that, so ``post_layernorm`` (used only on the pooled CLS) is not built. Images
    are resized (bicubic) to 224 px -> 16x16 tokens and normalised with CLIP's mean/std, as
    REPA's ``preprocess_raw_image``. A full CLIP checkpoint's text tower is ignored.
    """

    def __init__(self, variant: str = "large", input_size: int = 224, weights: str | None = PUBLISHED) -> None:
        check_variant("clip", variant, VARIANTS)
        hub_id = "openai/clip-vit-large-patch14"
        weights, arch = resolve(weights, hub_id)
        arch = fixed_normalisation(vision_part(arch, "clip", "clip_vision_model"), shipped_architecture(hub_id))
        super().__init__(CLIPVisionModel, CLIPVisionConfig.from_dict(arch.config), arch, name="clip", hub_id=hub_id,
                         weights=weights, input_size=input_size, num_prefix_tokens=1, final_norm="post_layernorm",
                         final_norm_affine=False, skip_final_norm=True)

    def hidden(self, pixels: torch.Tensor) -> torch.Tensor:
        # Position embeddings interpolated by transformers only when input_size is not CLIP's 224.
        return self.model(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
