"""MoCo v3 (Chen et al. 2021) ViTs from RCG's checkpoints, as timm models: REPA's contrastive targets.

REPA (``utils.load_encoders``) builds timm's ``VisionTransformer`` for 256-px images, reads
``ckpts/mocov3_vit{b,l}.pth`` (RCG's release: MoCo v3's training checkpoint, ``state_dict``
keyed ``module.base_encoder.*`` next to the momentum encoder and predictor), keeps the base
encoder without its projection head, repairs four misnamed keys of blocks 13 and 14
(``fix_mocov3_state_dict``) and resamples the position table to 16x16.
"""
from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any, Mapping

import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from rae.encoders.base import Encoder
from rae.encoders.hf import PUBLISHED, check_variant, shipped_architecture
from rae.registry import ENCODERS
from rae.weights import load_checked, load_file_named, missing_weights

VARIANTS = {"base": "mocov3_vitb", "large": "mocov3_vitl"}
BASE_ENCODER = "module.base_encoder."
# The released checkpoints' misnamed keys of ViT blocks 13 and 14, as REPA renames them.
MISNAMED = {"blocks.13.norm13": "blocks.13.norm1", "blocks.13.mlp.fc13": "blocks.13.mlp.fc1",
            "blocks.14.norm14": "blocks.14.norm2", "blocks.14.mlp.fc14": "blocks.14.mlp.fc2"}


def base_encoder_state(checkpoint: Mapping[str, Any], source: str) -> dict[str, torch.Tensor]:
    """timm keys of a MoCo v3 checkpoint's base encoder: prefix removed, misnamed keys repaired, heads dropped."""
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping) or not any(str(k).startswith(BASE_ENCODER) for k in state):
        raise ValueError(f"{source}: expected a MoCo v3 checkpoint ({{'state_dict': {{'{BASE_ENCODER}...': tensor}}}}, "
                         "as RCG's mocov3_vitb.pth / mocov3_vitl.pth)")
    converted = {}
    for key, value in state.items():
        if not key.startswith(BASE_ENCODER):
            continue  # momentum encoder, predictor
        name = key[len(BASE_ENCODER):]
        for wrong, right in MISNAMED.items():
            name = name.replace(wrong, right)
        if "head" not in name and name.split(".")[0] != "fc":
            converted[name] = value
    return converted


@ENCODERS.register("mocov3")
class MoCoV3(Encoder):
    """Patch tokens of MoCo v3's ViT after its final layer norm (timm ``forward_features``), CLS dropped.

    REPA's ``mocov3-vit-{b,l}``: ImageNet normalisation, 256-px images fed as they are
    (16x16 tokens). ``weights``: the checkpoint file; `PUBLISHED` means REPA's location,
    ``ckpts/mocov3_vit{b,l}.pth`` under the working directory. There is no hub id.
    """

    def __init__(self, variant: str = "base", input_size: int = 256, weights: str | None = PUBLISHED) -> None:
        super().__init__()
        check_variant("mocov3", variant, tuple(VARIANTS))
        name = VARIANTS[variant]
        arch = shipped_architecture(name)
        spec = dict(arch.config)
        self.patch_size, self.hidden_size = spec["patch_size"], spec["embed_dim"]
        if input_size <= 0 or input_size % self.patch_size:
            raise ValueError(f"mocov3: input_size {input_size} must be a positive multiple of the patch size "
                             f"{self.patch_size} (e.g. 256)")
        self.name, self.input_size = "mocov3", input_size
        self.pixel_mean, self.pixel_std = arch.image_mean, arch.image_std
        self.weights = f"ckpts/{name}.pth" if weights == PUBLISHED else weights
        self.model = VisionTransformer(
            img_size=input_size, patch_size=self.patch_size, embed_dim=self.hidden_size, depth=spec["depth"],
            num_heads=spec["num_heads"], mlp_ratio=spec["mlp_ratio"], qkv_bias=spec["qkv_bias"], num_classes=0,
            norm_layer=partial(nn.LayerNorm, eps=spec["layer_norm_eps"]),
        )
        self.freeze()

    def tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(pixels)[:, self.model.num_prefix_tokens:]

    def load_pretrained(self, allow_random: bool, log: logging.Logger) -> None:
        """Weights from the MoCo v3 checkpoint file in ``weights``, converted as REPA converts them."""
        how = ("Download RCG's MoCo v3 checkpoints (mocov3_vitb.pth, mocov3_vitl.pth; linked from the RCG and "
               "REPA READMEs) and put them under ckpts/, as REPA does, or point the encoder's `weights` at the file")
        if self.weights is None or not Path(self.weights).expanduser().is_file():
            tried = "no source (weights=None)" if self.weights is None else f"{self.weights} (no such file)"
            missing_weights("the mocov3 encoder", tried, how, allow_random, log)
            return
        path = Path(self.weights).expanduser()
        state = base_encoder_state(load_file_named(path, "a MoCo v3 checkpoint"), str(path))
        if "pos_embed" in state:
            state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"].float(), list(self.token_grid),
                                                        num_prefix_tokens=self.model.num_prefix_tokens)
        load_checked(self.model, state, "the mocov3 encoder", path)
        log.info("loaded mocov3 weights from %s", path)
