"""`tiny_vit`: a small ViT encoder pretrained on the run's own images, for offline runs.

No published encoder fits the embedded dataset on a CPU in minutes, and a random one carries
little of an image through its layers; the quickstart therefore pretrains this encoder first
(experiment `pretrain_encoder`, MAE's masked patch prediction), then uses it frozen as RAE uses
DINOv2 or MAE: its patch tokens after a final LayerNorm without affine are the latents.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from rae.decoders.blocks import Block
from rae.encoders.base import Encoder
from rae.nn.patch import PatchEmbed
from rae.nn.position import sincos_2d_position_embedding
from rae.registry import ENCODERS
from rae.weights import load_state_dict_file

LAYER_NORM_EPS = 1e-6


@ENCODERS.register("tiny_vit")
class TinyViT(Encoder):
    """Patch embedding + fixed sin-cos positions + ``depth`` pre-norm blocks + LayerNorm (no affine).

    ``weights``: a state dict file written by ``pretrain_encoder`` (``encoder.pt``), read by
    ``load_pretrained``; None leaves the initialisation (refused unless random weights are allowed).
    """

    def __init__(self, input_size: int = 32, patch_size: int = 4, hidden_size: int = 64, depth: int = 4,
                 num_heads: int = 4, mlp_ratio: float = 4.0, weights: str | None = None) -> None:
        super().__init__()
        if input_size < 1 or patch_size < 1 or input_size % patch_size:
            raise ValueError(f"tiny_vit: input_size {input_size} must be a positive multiple of "
                             f"patch_size {patch_size}")
        if depth < 1 or hidden_size % num_heads or hidden_size % 4:
            raise ValueError(f"tiny_vit: need depth >= 1 and hidden_size {hidden_size} divisible by 4 and by "
                             f"num_heads {num_heads}, got depth {depth}")
        self.input_size, self.patch_size, self.hidden_size = input_size, patch_size, hidden_size
        self.pixel_mean, self.pixel_std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        self.weights = weights
        self.patch_embed = PatchEmbed(3, hidden_size, patch_size)
        self.register_buffer("pos_embed", sincos_2d_position_embedding(hidden_size, input_size // patch_size)[None],
                             persistent=False)
        self.blocks = nn.ModuleList(Block(hidden_size, num_heads, int(hidden_size * mlp_ratio), LAYER_NORM_EPS)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(hidden_size, eps=LAYER_NORM_EPS, elementwise_affine=False)
        self.freeze()

    def tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visible_tokens(pixels, None)

    def visible_tokens(self, pixels: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """Tokens of the patches ``keep`` (B, K) only (MAE's encoder pass), or of all patches when None."""
        x = self.patch_embed(pixels) + self.pos_embed
        if keep is not None:
            x = torch.gather(x, 1, keep[..., None].expand(-1, -1, x.shape[-1]))
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def load_pretrained(self, allow_random: bool, log: logging.Logger) -> None:
        """The state dict ``weights`` (``pretrain_encoder``'s ``encoder.pt``)."""
        load_state_dict_file(self, self.weights, "the tiny_vit encoder", "tiny_vit.weights",
                             "Run the pretrain_encoder experiment (experiments/quickstart.gin's encoder stage) and "
                             "set tiny_vit.weights to its encoder.pt", allow_random, log)
