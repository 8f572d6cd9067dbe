"""SigLIP2 (Tschannen et al. 2025) vision tower: RAE's language-supervised encoder."""
from __future__ import annotations

import torch
from transformers import SiglipVisionConfig, SiglipVisionModel

from rae.encoders.hf import PUBLISHED, TransformersEncoder, check_variant, resolve, vision_part
from rae.registry import ENCODERS

VARIANTS = ("base", "large", "so400m")


@ENCODERS.register("siglip2")
class SigLIP2(TransformersEncoder):
    """All tokens of SigLIP2's ``last_hidden_state`` (SigLIP has no CLS token).

    The fixed-resolution checkpoints (``google/siglip2-*-patch16-256``) are SigLIP-format:
    RAE (``SigLIP2wNorm``) loads them with ``SiglipModel.from_pretrained(...).vision_model``,
    not the NaFlex ``Siglip2Model``, and takes ``last_hidden_state``, i.e. after
    ``post_layernorm``, whose affine it removes. The attention-pooling head is not built: RAE
    never uses its pooled output, and it would cost a forward pass.
    """

    def __init__(self, variant: str = "base", input_size: int = 256, weights: str | None = PUBLISHED,
                 final_norm_affine: bool = False) -> None:
        check_variant("siglip2", variant, VARIANTS)
        hub_id = f"google/siglip2-{variant}-patch16-256"
        weights, arch = resolve(weights, hub_id)
        # A full SigLIP config.json (model_type siglip) holds the tower's config in vision_config.
        config = SiglipVisionConfig.from_dict(vision_part(
            arch, "siglip", "siglip_vision_model", "; NaFlex 'siglip2' checkpoints are not supported").config)
        config.vision_use_head = False
        super().__init__(SiglipVisionModel, config, arch, name="siglip2",
                         hub_id=hub_id, weights=weights, input_size=input_size, num_prefix_tokens=0,
                         final_norm="post_layernorm", final_norm_affine=final_norm_affine, dropped=("head.",))

    def hidden(self, pixels: torch.Tensor) -> torch.Tensor:
        # As RAE: position embeddings interpolated when input_size differs from the training size.
        return self.model(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state

