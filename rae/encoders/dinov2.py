"""DINOv2 (Oquab et al. 2023), with or without registers (Darcet et al. 2024): RAE's default encoder."""
from __future__ import annotations

import torch
from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

from rae.encoders.hf import PUBLISHED, TransformersEncoder, check_model_type, check_variant, resolve
from rae.registry import ENCODERS

VARIANTS = ("small", "base", "large", "giant")


@ENCODERS.register("dinov2")
class DINOv2(TransformersEncoder):
    """Patch tokens of DINOv2's last layer; the CLS token and the registers are dropped.

    RAE (``Dinov2withNorm``) uses ``facebook/dinov2-with-registers-base`` at 224 px for 256-px
    images (448 px for 512) and removes the affine of the final layer norm. ``variant`` picks
    the shipped architecture; a local ``weights`` folder brings its own config.json instead.

    REPA's target (``dinov2-vit-{s,b,l,g}``: torch hub ``dinov2_vit*14``, ``x_norm_patchtokens``)
    is ``registers=False, final_norm_affine=True, resample_positions=True``: the same patch
    tokens, with the 37x37 position table resampled once to the input grid as REPA does.
    """

    def __init__(self, variant: str = "base", registers: bool = True, input_size: int = 224,
                 weights: str | None = PUBLISHED, final_norm_affine: bool = False,
                 resample_positions: bool = False) -> None:
        check_variant("dinov2", variant, VARIANTS)
        hub_id = f"facebook/dinov2-{'with-registers-' if registers else ''}{variant}"
        weights, arch = resolve(weights, hub_id)
        if registers:
            check_model_type(arch, "dinov2_with_registers", " (registers=True)")
            model_class, config = Dinov2WithRegistersModel, Dinov2WithRegistersConfig.from_dict(arch.config)
            prefix = 1 + config.num_register_tokens
        else:
            check_model_type(arch, "dinov2", " (registers=False)")
            model_class, config = Dinov2Model, Dinov2Config.from_dict(arch.config)
            prefix = 1
        super().__init__(model_class, config, arch, name="dinov2", hub_id=hub_id, weights=weights,
                         input_size=input_size, num_prefix_tokens=prefix, final_norm="layernorm",
                         final_norm_affine=final_norm_affine, resample_positions=resample_positions)

    def hidden(self, pixels: torch.Tensor) -> torch.Tensor:
        # [CLS, registers..., patches] after the final layer norm; unless resampled at load, the
        # position embeddings are interpolated (bicubic) from the 37x37 training grid to input_size.
        return self.model(pixel_values=pixels).last_hidden_state
