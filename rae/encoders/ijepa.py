"""I-JEPA (Assran et al. 2023) ViT-H/14: REPA's joint-embedding-predictive target encoder."""
from __future__ import annotations

import torch
from transformers import IJepaConfig, IJepaModel

from rae.encoders.hf import PUBLISHED, TransformersEncoder, check_variant, fixed_normalisation_architecture
from rae.registry import ENCODERS

VARIANTS = ("huge",)


@ENCODERS.register("ijepa")
class IJEPA(TransformersEncoder):
    """All tokens of I-JEPA's context encoder after its final layer norm (with affine); it has no CLS.

    REPA's ``jepa-vit-h`` (``models/jepa.py``, ImageNet-1k ViT-H/14): ImageNet normalisation,
    images resized (bicubic) to 224 px, the training size -> 16x16 tokens. The hub's image
    processor says mean/std 0.5 (transformers' conversion default), so the normalisation here
    is REPA's, fixed, not a folder's preprocessor_config.json.
    """

    def __init__(self, variant: str = "huge", input_size: int = 224, weights: str | None = PUBLISHED,
                 final_norm_affine: bool = True) -> None:
        check_variant("ijepa", variant, VARIANTS)
        hub_id = "facebook/ijepa_vith14_1k"
        weights, arch = fixed_normalisation_architecture(weights, hub_id, "ijepa")
        super().__init__(IJepaModel, IJepaConfig.from_dict(arch.config), arch, name="ijepa", hub_id=hub_id,
                         weights=weights, input_size=input_size, num_prefix_tokens=0, final_norm="layernorm",
                         final_norm_affine=final_norm_affine, dropped=("pooler.",))

    def hidden(self, pixels: torch.Tensor) -> torch.Tensor:
        # Position embeddings interpolated by transformers only when input_size is not 224.
        return self.model(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
