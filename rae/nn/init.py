"""Weight initialisation of the diffusion transformers, separate from construction (meta-device safe)."""
from __future__ import annotations

import itertools

from torch import nn

LINEAR_INITS = ("xavier", "torch")
_TORCH_LAYERS = (nn.Linear, nn.Conv2d, nn.Embedding, nn.LayerNorm)


def is_meta(module: nn.Module) -> bool:
    """True when any parameter or buffer lives on the meta device (nothing to initialise)."""
    return any(t.is_meta for t in itertools.chain(module.parameters(), module.buffers()))


def initialize(module: nn.Module, linear_init: str = "xavier") -> bool:
    """DiT-style init: every torch layer first, then each block's own ``init_weights`` rule.

    ``linear_init``: "xavier" (DiT, LightningDiT: xavier-uniform weights, zero biases) or
    "torch" (DiT-DH: PyTorch's default). Returns False, doing nothing, on the meta device.
    """
    if linear_init not in LINEAR_INITS:
        raise ValueError(f"unknown linear_init {linear_init!r}; expected one of {', '.join(LINEAR_INITS)}")
    if is_meta(module):
        return False
    for layer in module.modules():
        if isinstance(layer, nn.Linear) and linear_init == "xavier":
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, _TORCH_LAYERS):
            layer.reset_parameters()
    for block in module.modules():
        if hasattr(block, "init_weights"):
            block.init_weights()
    return True
