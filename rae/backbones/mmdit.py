"""MMDiT (Esser et al. 2024, SD3) as REPA trains it for text-to-image on MS-COCO (REPA's ``models/mmdit.py``).

Two token streams, the image patches and the caption context (B, L, 768) of CLIP text
features, each with its own weights, attend jointly in every block: per stream adaLN-modulated
queries, keys and values (the condition is the time embedding alone), one attention over the
concatenation [context; image], then per stream the gated output projection and MLP. The last
block has no output half on the context stream (its result would never be read). Width
``head_dim`` x depth with depth heads.

x (B, C, H, W) -> patch tokens + fixed sin-cos positions, context -> Linear(768 -> width)
-> ``depth`` joint blocks -> final adaLN layer on the image tokens -> velocity (B, C, H, W).

The condition ``y`` of ``forward`` is the context (``condition == "context"``). Classifier-free
guidance uses the empty caption's context as the null condition (REPA's ``empty_context.npy``);
it comes with the data, so guidance takes it as ``null_condition``. REPA replaces captions by it
in its data loader (``CFGDataset``, probability 0.1), not in the model: this backbone drops nothing.
REPA aligns the image tokens after block ``encoder_depth`` (8 by default), which
``forward(..., return_tokens_at=encoder_depth)`` returns; the projector heads belong to the
alignment loss (`rae.repa`), as for SiT.

Differences from REPA's file, none of which changes its numbers:
- REPA hard-codes ``pos_embed_max_size = 16`` and crops that 16 x 16 position table, so its model
  runs only on a 16 x 16 token grid; here the table has the grid's size, equal at 16.
- Options REPA's class carries but its text-to-image scripts never set (register tokens, a pooled
  vector embedder, RMSNorm, SwiGLU, QK-norm, scale-only modulation, learned sigma) are left out.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from rae.backbones.base import Backbone, BackboneOutput
from rae.nn.adaln import AdaLNModulation, modulate
from rae.nn.attention import Attention
from rae.nn.final_layer import FinalLayer
from rae.nn.init import initialize, is_meta
from rae.nn.mlp import make_mlp
from rae.nn.norm import block_norm
from rae.nn.patch import PatchEmbed, unpatchify
from rae.nn.timestep import SinusoidalTimestepEmbedder
from rae.registry import BACKBONES

INITS = ("release", "adaln_zero")


class JointStream(nn.Module):
    """One stream of a joint block (REPA's ``DismantledBlock``): its own adaLN, attention weights and MLP.

    ``pre_only``: the last block's context stream, which only contributes keys and values.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, pre_only: bool = False) -> None:
        super().__init__()
        self.pre_only = pre_only
        self.norm1 = block_norm("layer", dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, out_proj=not pre_only)
        if not pre_only:
            self.norm2 = block_norm("layer", dim)
            self.mlp = make_mlp("gelu", dim, mlp_ratio)
        self.adaLN_modulation = AdaLNModulation(dim, dim, chunks=2 if pre_only else 6)

    def heads(self, x: torch.Tensor, c: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """((q, k, v) of the modulated tokens, the modulation of the output half: gate, shift, scale, gate)."""
        shift, scale, *rest = self.adaLN_modulation(c)
        return self.attn.heads(modulate(self.norm1(x), shift, scale)), tuple(rest)

    def finish(self, x: torch.Tensor, attended: torch.Tensor, mods: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """x + gate * proj(attention output), then x + gate * mlp(modulate(norm(x)))."""
        gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        x = x + gate_msa * self.attn.merge(attended)
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class JointBlock(nn.Module):
    """SD3's MM-DiT block: the context and image streams attend together over [context; image] tokens."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, last: bool) -> None:
        super().__init__()
        self.context_block = JointStream(dim, num_heads, mlp_ratio, qkv_bias, pre_only=last)
        self.x_block = JointStream(dim, num_heads, mlp_ratio, qkv_bias)

    def forward(
        self, context: torch.Tensor, x: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(context, image tokens) -> both updated; the context is None after the last block."""
        context_qkv, context_mods = self.context_block.heads(context, c)
        x_qkv, x_mods = self.x_block.heads(x, c)
        q, k, v = (torch.cat(pair, dim=2) for pair in zip(context_qkv, x_qkv))
        attended = F.scaled_dot_product_attention(q, k, v)
        length = context.shape[1]
        x = self.x_block.finish(x, attended[:, :, length:], x_mods)
        if self.context_block.pre_only:
            return None, x
        return self.context_block.finish(context, attended[:, :, :length], context_mods), x


@BACKBONES.register("mmdit")
class MMDiT(Backbone):
    """``depth`` sets the size: width ``head_dim * depth``, ``depth`` heads (REPA: head_dim 32, depth 24).

    Defaults are REPA's MS-COCO 256 px setting: SD-VAE latents 4 x 32 x 32, patch 2, CLIP
    ViT-L/14 text features of width 768. ``init``: "release" leaves every layer at PyTorch's
    default init, as REPA's MMDiT (it defines no initialisation, so even its adaLN and output
    layers start non-zero); "adaln_zero" is DiT's init (xavier linears, zero adaLN and output).
    """

    condition = "context"

    def __init__(
        self,
        depth: int = 24,
        *,
        head_dim: int = 32,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        context_dim: int = 768,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        init: str = "release",
    ) -> None:
        super().__init__(in_channels, input_size, patch_size)
        if depth < 1:
            raise ValueError(f"mmdit.depth must be >= 1, got {depth}")
        if init not in INITS:
            raise ValueError(f"mmdit.init must be one of {', '.join(INITS)}, got {init!r}")
        hidden_size = head_dim * depth
        self.hidden_size = hidden_size
        self.context_dim = context_dim
        self.init = init

        # ---- Embeddings: patches + fixed positions (a buffer, as released), time, caption context ----
        self.x_embedder = PatchEmbed(in_channels, hidden_size, patch_size)
        self.register_buffer("pos_embed", torch.zeros(1, self.grid_size**2, hidden_size))
        self.t_embedder = SinusoidalTimestepEmbedder(hidden_size)
        self.context_embedder = nn.Linear(context_dim, hidden_size)

        # ---- Joint blocks (REPA aligns the image tokens after block ``encoder_depth``) ----
        self.joint_blocks = nn.ModuleList(
            JointBlock(hidden_size, depth, mlp_ratio, qkv_bias, last=i == depth - 1) for i in range(depth)
        )

        # ---- Output: velocity, as many channels as the input ----
        self.final_layer = FinalLayer(hidden_size, patch_size, in_channels, norm="layer")
        self.initialize_weights()

    @property
    def num_blocks(self) -> int:
        return len(self.joint_blocks)

    def initialize_weights(self) -> None:
        if self.init == "adaln_zero":
            initialize(self, linear_init="xavier")
        elif not is_meta(self):
            for layer in self.modules():
                if isinstance(layer, (nn.Linear, nn.Conv2d)):
                    layer.reset_parameters()
        self.reset_position_embedding(self.pos_embed)

    def check_condition(self, y: torch.Tensor, batch: int) -> None:
        """The caption context: (batch, L, context_dim) with L >= 1."""
        if y.ndim != 3 or y.shape[0] != batch or y.shape[1] < 1 or y.shape[2] != self.context_dim:
            raise ValueError(
                f"MMDiT expects a caption context y of shape ({batch}, L, {self.context_dim}), got {tuple(y.shape)}"
            )

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, return_tokens_at: int | None = None
    ) -> BackboneOutput:
        t = self.check_inputs(x, t, y, return_tokens_at)
        h = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t)
        context = self.context_embedder(y)
        tokens = None
        for number, block in enumerate(self.joint_blocks, start=1):
            context, h = block(context, h, c)
            if number == return_tokens_at:
                tokens = h
        out = unpatchify(self.final_layer(h, c), self.patch_size, self.in_channels)
        return out if return_tokens_at is None else (out, tokens)
