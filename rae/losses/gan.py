"""GAN objectives of RAE's stage 1 (as its ``disc/gan_loss.py``, after VQGAN): hinge for D, -E[D] for G."""
from __future__ import annotations

import torch
from torch.nn import functional as F

from rae.registry import LOSSES


@LOSSES.register("hinge_d")
def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (E[relu(1 - D(real))] + E[relu(1 + D(fake))]), means over every logit."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


@LOSSES.register("vanilla_d")
def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (E[softplus(-D(real))] + E[softplus(D(fake))]): the logistic (cross-entropy) D loss."""
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


@LOSSES.register("vanilla_g")
def vanilla_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """-E[D(fake)]: what RAE calls the "vanilla" generator loss (the hinge-GAN G loss, not softplus)."""
    return -logits_fake.mean()


def quantize_8bit(images: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to 256 levels, as RAE does to the fakes it shows D (like saved images)."""
    return torch.round(images.clamp(0.0, 1.0) * 255.0) / 255.0
