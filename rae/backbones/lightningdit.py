"""LightningDiT (Yao et al. 2025), as RAE releases it: a DiT with SwiGLU, RMSNorm, 2-D RoPE,
optional QK-norm and optional adaLN without shift, conditioned on Gaussian-Fourier time features.

x (B, C, H, W) -> patch tokens + sin-cos positions -> N adaLN blocks (condition t + y)
-> final adaLN layer -> patches -> velocity (B, C, H, W).
"""
from __future__ import annotations

import torch
from torch import nn

from rae.backbones.base import Backbone, BackboneOutput, frozen_position_embedding, run_blocks
from rae.backbones.sizes import resolve_size
from rae.nn.block import AdaLNBlock
from rae.nn.final_layer import FinalLayer
from rae.nn.label import LabelEmbedder
from rae.nn.patch import PatchEmbed, unpatchify
from rae.nn.rope import RotaryEmbedding2D
from rae.nn.timestep import FourierTimestepEmbedder
from rae.registry import BACKBONES


@BACKBONES.register("lightningdit")
class LightningDiT(Backbone):
    """``size`` is a preset (S, B, L, XL); explicit ``hidden_size``/``depth``/``num_heads`` override it.

    ``learn_sigma`` keeps the released layout whose output layer predicts 2C channels, of which
    only the first C are used.
    """

    def __init__(
        self,
        size: str | None = None,
        hidden_size: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        *,
        input_size: int = 16,
        patch_size: int = 1,
        in_channels: int = 768,
        num_classes: int = 1000,
        class_dropout_prob: float = 0.1,
        mlp_ratio: float = 4.0,
        use_swiglu: bool = True,
        use_rope: bool = True,
        use_rmsnorm: bool = True,
        use_qknorm: bool = False,
        wo_shift: bool = False,
        use_pos_embed: bool = True,
        learn_sigma: bool = False,
    ) -> None:
        super().__init__(in_channels, input_size, patch_size)
        hidden_size, depth, num_heads = resolve_size("lightningdit", size, hidden_size, depth, num_heads)
        self.hidden_size = hidden_size
        self.learn_sigma = learn_sigma
        norm = "rms" if use_rmsnorm else "layer"

        # ---- Embeddings: patches (+ fixed positions), time, label ----
        self.x_embedder = PatchEmbed(in_channels, hidden_size, patch_size)
        self.pos_embed = frozen_position_embedding(self.grid_size**2, hidden_size) if use_pos_embed else None
        self.t_embedder = FourierTimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        self.rope = RotaryEmbedding2D(hidden_size // num_heads, self.grid_size) if use_rope else None

        # ---- Transformer ----
        self.blocks = nn.ModuleList(
            AdaLNBlock(hidden_size, num_heads, mlp_ratio, mlp="swiglu" if use_swiglu else "gelu",
                       norm=norm, qk_norm=use_qknorm, shift=not wo_shift)
            for _ in range(depth)
        )

        # ---- Output ----
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels, norm=norm)
        self.initialize_weights()

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, return_tokens_at: int | None = None
    ) -> BackboneOutput:
        t = self.check_inputs(x, t, y, return_tokens_at)
        h = self.x_embedder(x)
        if self.pos_embed is not None:
            h = h + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y)
        h, tokens = run_blocks(self.blocks, h, c, self.rope, return_tokens_at)
        out = unpatchify(self.final_layer(h, c), self.patch_size, self.out_channels)
        out = out[:, : self.in_channels]
        return out if return_tokens_at is None else (out, tokens)
