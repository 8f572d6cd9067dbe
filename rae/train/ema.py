"""Exponential moving average of a model's weights (the model used for sampling and eval)."""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """Keeps ``decay``-averaged copies of a model's parameters; buffers are copied as they are.

    Build it from the uncompiled module: a copy of a ``torch.compile``d module would share the
    live model's compiled forward (a bug seen in research code).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        if hasattr(model, "_orig_mod"):
            raise ValueError("build the EMA from the uncompiled module, not a torch.compile wrapper")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """ema <- decay * ema + (1 - decay) * live, parameter by parameter."""
        live = dict(model.named_parameters())
        names = [n for n, _ in self.model.named_parameters()]
        ema_params = [p for _, p in self.model.named_parameters()]
        live_params = [live[n].detach() for n in names]
        torch._foreach_lerp_(ema_params, live_params, 1.0 - self.decay)
        for buf, live_buf in zip(self.model.buffers(), model.buffers()):
            buf.copy_(live_buf)

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)
