"""LightningDiT (Yao et al. 2025), as RAE releases it: a DiT with SwiGLU, RMSNorm, 2-D RoPE,
optional QK-norm and optional adaLN without shift, conditioned on Gaussian-Fourier time features.

x (B, C, H, W) -> patch tokens + sin-cos positions -> N adaLN blocks (condition t + y)
-> final adaLN layer -> patches -> velocity (B, C, H, W).
"""
from __future__ import annotations

from torch import nn

from rae.backbones.dit import DiT
from rae.backbones.options import DiTOptions, takes_options
from rae.backbones.sizes import resolve_size
from rae.nn.final_layer import FinalLayer
from rae.nn.label import LabelEmbedder
from rae.nn.patch import PatchEmbed
from rae.nn.timestep import FourierTimestepEmbedder
from rae.registry import BACKBONES


@BACKBONES.register("lightningdit")
@takes_options(DiTOptions)
class LightningDiT(DiT):
    """``size`` is a preset (S, B, L, XL); explicit ``hidden_size``/``depth``/``num_heads`` override it.
    The other options are `DiTOptions`' fields, keyword arguments of their own.

    ``learn_sigma`` keeps the released layout whose output layer predicts 2C channels, of which
    only the first C are used.
    """

    def __init__(self, size: str | None = None, hidden_size: int | None = None, depth: int | None = None,
                 num_heads: int | None = None, *, learn_sigma: bool = False, options: DiTOptions) -> None:
        super().__init__(options.in_channels, options.input_size, options.patch_size)
        hidden_size, depth, num_heads = resolve_size("lightningdit", size, hidden_size, depth, num_heads)
        self.hidden_size = hidden_size
        self.learn_sigma = learn_sigma

        # ---- Embeddings: patches (+ fixed positions), time, label ----
        self.x_embedder = PatchEmbed(self.in_channels, hidden_size, self.patch_size)
        self.pos_embed = options.position_embedding(hidden_size)
        self.t_embedder = FourierTimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(options.num_classes, hidden_size, options.class_dropout_prob)
        self.rope = options.rope(hidden_size, num_heads)

        # ---- Transformer ----
        self.blocks = nn.ModuleList(options.block(hidden_size, num_heads) for _ in range(depth))

        # ---- Output ----
        self.out_channels = 2 * self.in_channels if learn_sigma else self.in_channels
        self.final_layer = FinalLayer(hidden_size, self.patch_size, self.out_channels, norm=options.norm)
        self.initialize_weights()
