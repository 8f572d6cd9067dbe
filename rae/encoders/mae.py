"""MAE's ViT encoder (He et al. 2022) with masking off: RAE's self-supervised alternative encoder."""
from __future__ import annotations

import torch
from transformers import ViTMAEConfig, ViTMAEModel

from rae.encoders.hf import PUBLISHED, TransformersEncoder, check_model_type, check_variant, resolve
from rae.registry import ENCODERS

VARIANTS = ("base", "large", "huge")


@ENCODERS.register("mae")
class MAE(TransformersEncoder):
    """Patch tokens of the MAE encoder on the whole image, in raster order; the CLS token is dropped.

    RAE (``MAEwNorm``) loads ``facebook/vit-mae-base`` (a ``ViTMAEForPreTraining`` checkpoint,
    whose decoder is not built here), sets ``mask_ratio`` to 0, removes the affine of the final
    layer norm and runs it at 256 px with interpolated position embeddings.

    REPA's target (``mae-vit-l``, its ``models/mae_vit.py``) is ``variant="large",
    skip_final_norm=True, resample_positions=True``: the last block's patch tokens BEFORE the
    final layer norm, the 14x14 position table resampled once to 16x16 for 256-px images.
    REPA loads MAE's own ``mae_vitl.pth`` into timm's ViT-L (LayerNorm eps 1e-6); the hub
    conversion's config says eps 1e-12, which is kept here.
    """

    def __init__(self, variant: str = "base", input_size: int = 256, weights: str | None = PUBLISHED,
                 final_norm_affine: bool = False, skip_final_norm: bool = False,
                 resample_positions: bool = False) -> None:
        check_variant("mae", variant, VARIANTS)
        hub_id = f"facebook/vit-mae-{variant}"
        weights, arch = resolve(weights, hub_id)
        check_model_type(arch, "vit_mae")
        config = ViTMAEConfig.from_dict(arch.config)
        config.mask_ratio = 0.0
        super().__init__(ViTMAEModel, config, arch, name="mae",
                         hub_id=hub_id, weights=weights, input_size=input_size, num_prefix_tokens=1,
                         final_norm="layernorm", final_norm_affine=final_norm_affine,
                         skip_final_norm=skip_final_norm, resample_positions=resample_positions)

    def hidden(self, pixels: torch.Tensor) -> torch.Tensor:
        # transformers' ViT-MAE reorders the tokens by argsort(noise) even at mask_ratio 0 (random
        # noise by default); increasing noise makes that permutation the identity: raster order.
        b, n = pixels.shape[0], self.token_grid[0] * self.token_grid[1]
        noise = torch.arange(n, device=pixels.device, dtype=torch.float32).expand(b, n)
        return self.model(pixel_values=pixels, noise=noise, interpolate_pos_encoding=True).last_hidden_state
