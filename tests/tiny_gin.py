"""Gin bindings of the tiny models that the runner tests build in the configs they write."""
from __future__ import annotations


def tiny_ditdh(num_classes: int) -> str:
    """A one-block DiT-DH, 32 wide, with a one-block 32-wide head, on 384 x 4 x 4 latents (DINOv2-S at 56 px)."""
    return f"""
ditdh.hidden_size = 32
ditdh.depth = 1
ditdh.num_heads = 2
ditdh.head_hidden_size = 32
ditdh.head_depth = 1
ditdh.head_num_heads = 2
ditdh.input_size = 4
ditdh.patch_size = 1
ditdh.in_channels = 384
ditdh.num_classes = {num_classes}
"""
