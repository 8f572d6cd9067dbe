"""Adaptive GAN weight (VQGAN, Esser et al. 2021, eq. 7), as RAE's stage-1 training uses it."""
from __future__ import annotations

import torch


def adaptive_gan_weight(
    rec_loss: torch.Tensor,
    gan_loss: torch.Tensor,
    last_layer: torch.Tensor,
    cap: float = 1e4,
    eps: float = 1e-6,
) -> torch.Tensor:
    """||grad_w rec_loss|| / (||grad_w gan_loss|| + eps) at the decoder's last layer w, clamped to [0, cap].

    Both gradients are taken with ``retain_graph=True`` so the caller can still backpropagate;
    norms are in float32 with autocast off (half-precision norms of large layers overflow).
    The result is detached: the weight is a scale, not something to differentiate.
    """
    with torch.autocast(device_type=last_layer.device.type, enabled=False):
        rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
        gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
        weight = rec_grad.float().norm() / (gan_grad.float().norm() + eps)
    return weight.clamp(0.0, cap).detach()
