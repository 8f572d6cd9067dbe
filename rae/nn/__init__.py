"""Shared building blocks of the diffusion transformers (LightningDiT, DiT-DH, SiT), one concept per module."""
from rae.nn.adaln import AdaLNModulation, modulate
from rae.nn.attention import Attention
from rae.nn.block import AdaLNBlock
from rae.nn.final_layer import FinalLayer
from rae.nn.init import initialize, is_meta
from rae.nn.label import LabelEmbedder
from rae.nn.mlp import GeluMLP, SwiGLU, make_mlp
from rae.nn.norm import RMSNorm, block_norm
from rae.nn.patch import PatchEmbed, unpatchify
from rae.nn.position import sincos_2d_position_embedding
from rae.nn.rope import RotaryEmbedding2D
from rae.nn.timestep import FourierTimestepEmbedder, SinusoidalTimestepEmbedder, TimestepEmbedder

__all__ = [
    "AdaLNBlock", "AdaLNModulation", "Attention", "FinalLayer", "FourierTimestepEmbedder", "GeluMLP",
    "LabelEmbedder", "PatchEmbed", "RMSNorm", "RotaryEmbedding2D", "SinusoidalTimestepEmbedder", "SwiGLU",
    "TimestepEmbedder", "block_norm", "initialize", "is_meta", "make_mlp", "modulate",
    "sincos_2d_position_embedding", "unpatchify",
]
