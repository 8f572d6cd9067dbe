"""The forward pass LightningDiT and SiT share: one stack of adaLN blocks on patch tokens, conditioned on t + y."""
from __future__ import annotations

import torch
from torch import nn

from rae.backbones.base import Backbone, BackboneOutput, run_blocks
from rae.nn.final_layer import FinalLayer
from rae.nn.patch import PatchEmbed, unpatchify
from rae.nn.rope import RotaryEmbedding2D


class DiT(Backbone):
    """x (B, C, H, W) -> patch tokens (+ positions) -> ``blocks`` (condition t + y) -> final layer -> (B, C, H, W).

    Subclasses build the modules below; an output layer wider than the input (LightningDiT's
    ``learn_sigma``) is cut back to the input's channels.
    """

    x_embedder: PatchEmbed
    pos_embed: torch.Tensor | None
    t_embedder: nn.Module
    rope: RotaryEmbedding2D | None
    blocks: nn.ModuleList
    final_layer: FinalLayer
    out_channels: int

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
