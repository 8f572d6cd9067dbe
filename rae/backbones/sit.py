"""SiT (Ma et al. 2024) as REPA trains it: a DiT with LayerNorm, tanh-GELU MLP and sinusoidal time features.

x (B, C, H, W) -> patch tokens + fixed sin-cos positions -> N adaLN-Zero blocks (condition t + y)
-> final adaLN layer -> patches -> velocity (B, C, H, W).

REPA's projector heads are not part of this module: they belong to the alignment loss
(`rae.repa.loss`), which reads the tokens after block ``encoder_depth`` through
``forward(..., return_tokens_at=encoder_depth)``; `rae.repa.checkpoint` splits a released
REPA checkpoint between the two.
"""
from __future__ import annotations

from torch import nn

from rae.backbones.base import frozen_position_embedding
from rae.backbones.dit import DiT
from rae.backbones.sizes import resolve_size
from rae.nn.block import AdaLNBlock
from rae.nn.final_layer import FinalLayer
from rae.nn.label import LabelEmbedder
from rae.nn.patch import PatchEmbed
from rae.nn.timestep import SinusoidalTimestepEmbedder
from rae.registry import BACKBONES

# REPA's model names without the "SiT-" prefix: (DiT size preset, patch size).
SIT_SIZES: dict[str, tuple[str, int]] = {
    "B/1": ("B", 1),
    "B/2": ("B", 2),
    "L/1": ("L", 1),
    "L/2": ("L", 2),
    "XL/1": ("XL", 1),
    "XL/2": ("XL", 2),
}


def resolve_sit_size(size: str | None, patch_size: int | None) -> tuple[str | None, int]:
    """("XL", 2) from "XL/2"; an explicit ``patch_size`` overrides the preset's, default 2."""
    if size is None:
        return None, 2 if patch_size is None else patch_size
    if size.upper() not in SIT_SIZES:
        raise ValueError(f"sit: unknown size {size!r}; expected one of {', '.join(SIT_SIZES)}")
    preset, preset_patch = SIT_SIZES[size.upper()]
    return preset, preset_patch if patch_size is None else patch_size


@BACKBONES.register("sit")
class SiT(DiT):
    """``size`` is one of REPA's presets ("B/2", "L/2", "XL/2", and the /1 variants); explicit
    ``hidden_size``/``depth``/``num_heads``/``patch_size`` override it.

    Defaults are REPA's ImageNet 256 px setting: SD-VAE latents 4 x 32 x 32, 1000 classes,
    label dropout 0.1. ``qk_norm`` adds REPA's optional per-head LayerNorm on queries and keys.
    """

    def __init__(
        self,
        size: str | None = None,
        hidden_size: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        patch_size: int | None = None,
        *,
        input_size: int = 32,
        in_channels: int = 4,
        num_classes: int = 1000,
        class_dropout_prob: float = 0.1,
        mlp_ratio: float = 4.0,
        qk_norm: bool = False,
    ) -> None:
        preset, patch_size = resolve_sit_size(size, patch_size)
        super().__init__(in_channels, input_size, patch_size)
        hidden_size, depth, num_heads = resolve_size("sit", preset, hidden_size, depth, num_heads)
        self.hidden_size = hidden_size

        # ---- Embeddings: patches + fixed positions, time, label ----
        self.x_embedder = PatchEmbed(in_channels, hidden_size, patch_size)
        self.pos_embed = frozen_position_embedding(self.grid_size**2, hidden_size)
        self.t_embedder = SinusoidalTimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        self.rope = None

        # ---- Transformer (REPA aligns the tokens after block ``encoder_depth``) ----
        self.blocks = nn.ModuleList(
            AdaLNBlock(hidden_size, num_heads, mlp_ratio, mlp="gelu", norm="layer", qk_norm=qk_norm)
            for _ in range(depth)
        )

        # ---- Output: velocity, as many channels as the input ----
        self.out_channels = in_channels
        self.final_layer = FinalLayer(hidden_size, patch_size, in_channels, norm="layer")
        self.initialize_weights()
