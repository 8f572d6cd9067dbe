"""The RAE decoder: an MAE-style ViT that turns a latent grid into pixels.

latent (B, C, h, w) -> tokens -> Linear to width -> [cls] + tokens + fixed sin-cos positions
-> transformer blocks -> LayerNorm -> Linear to patch pixels -> drop cls -> unpatchify (B, 3, h*p, w*p).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from rae.decoders.base import Decoder
from rae.decoders.blocks import Block
from rae.decoders.release import convert_release_state_dict, is_release_state_dict
from rae.encoders.tokens import latent_to_tokens
from rae.nn.patch import unpatchify
from rae.nn.position import sincos_2d_position_embedding
from rae.registry import DECODERS


class ViTSize(NamedTuple):
    hidden: int
    depth: int
    heads: int
    mlp: int


# ViT-MAE decoder sizes used by RAE (docs/paper_configs.md, "RAE stage 1: decoder"); `tiny` is for tests.
VIT_SIZES: dict[str, ViTSize] = {
    "tiny": ViTSize(hidden=48, depth=2, heads=3, mlp=96),
    "mini": ViTSize(hidden=96, depth=4, heads=4, mlp=384),  # the quickstart's: small enough for minutes on a CPU
    "B": ViTSize(hidden=768, depth=12, heads=12, mlp=3072),
    "L": ViTSize(hidden=1024, depth=24, heads=16, mlp=4096),
    "XL": ViTSize(hidden=1152, depth=28, heads=16, mlp=4096),
}


@DECODERS.register("vit")
class ViTDecoder(Decoder):
    """MAE-style ViT decoder; ``in_channels`` and ``token_grid`` come from the encoder it inverts.

    Linear and LayerNorm layers keep PyTorch's default initialisation, as in the release (which
    never re-initialises them). Positions are fixed sin-cos, not learned: the release stores them
    as a frozen parameter (``decoder_pos_embed``, requires_grad=False); here they are a buffer.
    """

    def __init__(
        self,
        in_channels: int,
        token_grid: tuple[int, int],
        size: str = "XL",
        patch_size: int = 16,
        out_channels: int = 3,
        layer_norm_eps: float = 1e-12,
    ) -> None:
        super().__init__()
        if size not in VIT_SIZES:
            raise ValueError(f"unknown ViT decoder size {size!r}; sizes: {', '.join(VIT_SIZES)}")
        if patch_size < 1 or in_channels < 1 or min(token_grid) < 1 or token_grid[0] != token_grid[1]:
            raise ValueError(
                f"decoder needs positive in_channels and patch_size and a square token_grid; got "
                f"in_channels={in_channels}, token_grid={tuple(token_grid)}, patch_size={patch_size}"
            )
        dims = VIT_SIZES[size]
        self.size = size
        self.in_channels = in_channels
        self.token_grid = (int(token_grid[0]), int(token_grid[1]))
        self.patch_size = patch_size
        self.out_channels = out_channels

        # ---- tokens in: embed, cls token (zero-initialised, as released), fixed positions ----
        self.embed = nn.Linear(in_channels, dims.hidden)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dims.hidden))
        self.register_buffer("pos_embed", position_embedding_with_cls(dims.hidden, self.token_grid[0]))

        # ---- transformer ----
        self.blocks = nn.ModuleList(
            Block(dims.hidden, dims.heads, dims.mlp, layer_norm_eps) for _ in range(dims.depth)
        )

        # ---- pixels out ----
        self.norm = nn.LayerNorm(dims.hidden, eps=layer_norm_eps)
        self.head = nn.Linear(dims.hidden, patch_size * patch_size * out_channels)

    @property
    def last_layer(self) -> nn.Parameter:
        return self.head.weight

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent (B, in_channels, h, w) -> pixels (B, out_channels, h*p, w*p), encoder-normalised."""
        self.check_latent(latent)
        x = self.embed(latent_to_tokens(latent))
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        patches = self.head(self.norm(x))[:, 1:]
        return unpatchify(patches, self.patch_size, self.out_channels)

    def import_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Our own checkpoints pass through; RAE's released ``model.pt`` key names are converted."""
        return convert_release_state_dict(state) if is_release_state_dict(state) else state


def position_embedding_with_cls(dim: int, side: int) -> torch.Tensor:
    """(1, 1 + side*side, dim): a zero slot for the cls token, then MAE's fixed 2-D sin-cos grid."""
    grid = sincos_2d_position_embedding(dim, side)
    return torch.cat([grid.new_zeros(1, dim), grid]).unsqueeze(0)
