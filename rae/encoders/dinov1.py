"""DINO (Caron et al. 2021) ViT-B/16, the self-distilled ViT: one of REPA's target encoders."""
from __future__ import annotations

import torch
from transformers import ViTConfig, ViTModel

from rae.encoders.hf import PUBLISHED, TransformersEncoder, check_variant, fixed_normalisation_architecture
from rae.registry import ENCODERS

VARIANTS = ("base",)


@ENCODERS.register("dinov1")
class DINOv1(TransformersEncoder):
    """Patch tokens of DINO's last layer after its final layer norm (with affine); CLS dropped.

    REPA's ``dinov1-vit-b``: ImageNet normalisation, 256-px images fed as they are, the 14x14
    position table resampled once to 16x16 (``resample_positions``). REPA's ``models/dinov1.py``
    is not in its release (the name fails to import, see docs/paper_configs.md), so its token
    choice is inferred: REPA aligns patch tokens with every other target. ``facebook/dino-vitb16``
    is transformers' ``ViTModel``; its pooler is not built. The pixel normalisation is REPA's,
    not a local folder's preprocessor_config.json.
    """

    def __init__(self, variant: str = "base", input_size: int = 256, weights: str | None = PUBLISHED,
                 final_norm_affine: bool = True, resample_positions: bool = True) -> None:
        check_variant("dinov1", variant, VARIANTS)
        hub_id = "facebook/dino-vitb16"
        weights, arch = fixed_normalisation_architecture(weights, hub_id, "vit")
        super().__init__(ViTModel, ViTConfig.from_dict(arch.config), arch, name="dinov1", hub_id=hub_id,
                         weights=weights, input_size=input_size, num_prefix_tokens=1, final_norm="layernorm",
                         final_norm_affine=final_norm_affine, dropped=("pooler.",),
                         resample_positions=resample_positions, model_kwargs={"add_pooling_layer": False})

    def hidden(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
