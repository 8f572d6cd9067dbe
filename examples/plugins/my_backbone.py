"""A backbone plugin: the stage-2 network f(x_t, t, y) -> prediction with the shape of x_t.

Subclass `rae.backbones.base.Backbone`: call its ``__init__`` with the latent shape (it gives
``latent_shape``, ``grid_size``, ``check_inputs``), set ``y_embedder`` (a `LabelEmbedder`: the
experiments read ``num_classes`` and ``null_label`` from it) and ``hidden_size``, and implement
``num_blocks`` and ``forward``. The base class's ``token_width`` (REPA projects the tokens after a
block) is ``hidden_size``, and its ``initialize_weights`` is DiT's init (xavier linears, then each
embedder's own rule; nothing on the meta device): override them for another width or init.

    python tools/run.py --import examples/plugins/my_backbone.py --gin examples/plugins/my_backbone.gin
"""
from __future__ import annotations

import torch
from torch import nn

from rae.backbones.base import Backbone, BackboneOutput
from rae.nn.label import LabelEmbedder
from rae.nn.timestep import SinusoidalTimestepEmbedder
from rae.registry import BACKBONES


@BACKBONES.register("token_mlp")
class TokenMLP(Backbone):
    """Every latent position through the same residual MLPs, with (t, y) added to each token: no attention."""

    def __init__(self, in_channels: int = 384, input_size: int = 4, hidden_size: int = 64, depth: int = 2,
                 num_classes: int = 10, class_dropout_prob: float = 0.1) -> None:
        super().__init__(in_channels, input_size, patch_size=1)
        self.hidden_size = hidden_size
        self.x_embedder = nn.Linear(in_channels, hidden_size)
        self.t_embedder = SinusoidalTimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden_size), nn.Linear(hidden_size, 2 * hidden_size), nn.SiLU(),
                          nn.Linear(2 * hidden_size, hidden_size))
            for _ in range(depth)
        )
        self.final_layer = nn.Linear(hidden_size, in_channels)
        self.initialize_weights()

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                return_tokens_at: int | None = None) -> BackboneOutput:
        t = self.check_inputs(x, t, y, return_tokens_at)
        batch, channels, height, width = x.shape
        h = self.x_embedder(x.flatten(2).transpose(1, 2))  # (B, h * w, hidden)
        h = h + (self.t_embedder(t) + self.y_embedder(y)).unsqueeze(1)
        tokens = None
        for number, block in enumerate(self.blocks, start=1):
            h = h + block(h)
            if number == return_tokens_at:
                tokens = h
        out = self.final_layer(h).transpose(1, 2).reshape(batch, channels, height, width)
        return out if return_tokens_at is None else (out, tokens)
