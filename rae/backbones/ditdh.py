"""DiT-DH (RAE paper, Sec. 4): a DiT body plus a wide, shallow DDT head.

body: x (B, C, H, W) -> patch tokens s (+ sin-cos positions) -> N adaLN blocks (condition
silu(t + y)) -> z = silu(t + s), projected to the head width.
head: x -> its own patch tokens -> M wide adaLN blocks conditioned per token on z
-> final adaLN layer (condition z) -> velocity (B, C, H, W).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from rae.backbones.base import Backbone, BackboneOutput, run_blocks
from rae.backbones.options import DiTOptions, takes_options
from rae.backbones.sizes import resolve_size
from rae.nn.final_layer import FinalLayer
from rae.nn.label import LabelEmbedder
from rae.nn.patch import PatchEmbed, unpatchify
from rae.nn.timestep import FourierTimestepEmbedder
from rae.registry import BACKBONES


@BACKBONES.register("ditdh")
@takes_options(DiTOptions)
class DiTDH(Backbone):
    """``size`` (S, B, L, XL) or explicit ``hidden_size``/``depth``/``num_heads`` set the body;
    the head defaults to the paper's 2048 wide, 2 deep, 16 heads. Body and head share one patch
    size and the other options, `DiTOptions`' fields, keyword arguments of their own.
    """

    linear_init = "torch"  # as released: linear layers keep PyTorch's default init (LightningDiT uses xavier)

    def __init__(self, size: str | None = None, hidden_size: int | None = None, depth: int | None = None,
                 num_heads: int | None = None, *, head_hidden_size: int = 2048, head_depth: int = 2,
                 head_num_heads: int = 16, options: DiTOptions) -> None:
        super().__init__(options.in_channels, options.input_size, options.patch_size)
        hidden_size, depth, num_heads = resolve_size("ditdh", size, hidden_size, depth, num_heads)
        self.hidden_size = hidden_size
        self.head_hidden_size = head_hidden_size
        in_channels, patch_size = self.in_channels, self.patch_size

        # ---- Body: a DiT on the noisy latent, conditioned on time and label ----
        self.s_embedder = PatchEmbed(in_channels, hidden_size, patch_size)
        self.pos_embed = options.position_embedding(hidden_size)
        self.t_embedder = FourierTimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(options.num_classes, hidden_size, options.class_dropout_prob)
        self.body_rope = options.rope(hidden_size, num_heads)
        self.body = nn.ModuleList(options.block(hidden_size, num_heads) for _ in range(depth))

        # ---- Head: wide and shallow, conditioned per token on the body's output ----
        self.s_projector = (nn.Linear(hidden_size, head_hidden_size)
                            if hidden_size != head_hidden_size else nn.Identity())
        self.x_embedder = PatchEmbed(in_channels, head_hidden_size, patch_size)
        self.head_rope = options.rope(head_hidden_size, head_num_heads)
        self.head = nn.ModuleList(options.block(head_hidden_size, head_num_heads) for _ in range(head_depth))
        self.final_layer = FinalLayer(head_hidden_size, patch_size, in_channels, norm=options.norm)
        self.initialize_weights()

    @property
    def num_blocks(self) -> int:
        return len(self.body) + len(self.head)

    def token_width(self, block: int) -> int:
        return self.hidden_size if block <= len(self.body) else self.head_hidden_size

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, return_tokens_at: int | None = None
    ) -> BackboneOutput:
        t = self.check_inputs(x, t, y, return_tokens_at)
        t_emb = self.t_embedder(t)
        # As released: the condition passes through SiLU here and again inside every adaLN.
        c = F.silu(t_emb + self.y_embedder(y))

        s = self.s_embedder(x)
        if self.pos_embed is not None:
            s = s + self.pos_embed
        s, body_tokens = run_blocks(self.body, s, c, self.body_rope, return_tokens_at)
        z = self.s_projector(F.silu(t_emb.unsqueeze(1) + s))

        h = self.x_embedder(x)
        h, head_tokens = run_blocks(self.head, h, z, self.head_rope, return_tokens_at, first=len(self.body) + 1)
        out = unpatchify(self.final_layer(h, z), self.patch_size, self.in_channels)
        if return_tokens_at is None:
            return out
        tokens = body_tokens if return_tokens_at <= len(self.body) else head_tokens
        return out, tokens
