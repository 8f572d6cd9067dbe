"""GAN objectives of RAE's stage 1 (as its ``disc/gan_loss.py``, after VQGAN): hinge for D, -E[D] for G.

A D loss is the sum of a term on the real logits and a term on the fake logits (`DiscLossTerms`),
so D can run on the fakes and on the reals as two passes, as RAE's D step does.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch.nn import functional as F

from rae.registry import LOSSES


class DiscLossTerms(NamedTuple):
    """A D loss as ``real(logits_real) + fake(logits_fake)``, each a mean over its logits."""

    real: Callable[[torch.Tensor], torch.Tensor]
    fake: Callable[[torch.Tensor], torch.Tensor]


def hinge_real(logits_real: torch.Tensor) -> torch.Tensor:
    """0.5 * E[relu(1 - D(real))]."""
    return 0.5 * F.relu(1.0 - logits_real).mean()


def hinge_fake(logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * E[relu(1 + D(fake))]."""
    return 0.5 * F.relu(1.0 + logits_fake).mean()


def vanilla_real(logits_real: torch.Tensor) -> torch.Tensor:
    """0.5 * E[softplus(-D(real))]."""
    return 0.5 * F.softplus(-logits_real).mean()


def vanilla_fake(logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * E[softplus(D(fake))]."""
    return 0.5 * F.softplus(logits_fake).mean()


D_LOSS_TERMS = {"hinge": DiscLossTerms(hinge_real, hinge_fake), "vanilla": DiscLossTerms(vanilla_real, vanilla_fake)}


@LOSSES.register("hinge_d")
def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (E[relu(1 - D(real))] + E[relu(1 + D(fake))]), means over every logit."""
    return hinge_real(logits_real) + hinge_fake(logits_fake)


@LOSSES.register("vanilla_d")
def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (E[softplus(-D(real))] + E[softplus(D(fake))]): the logistic (cross-entropy) D loss."""
    return vanilla_real(logits_real) + vanilla_fake(logits_fake)


@LOSSES.register("vanilla_g")
def vanilla_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """-E[D(fake)]: what RAE calls the "vanilla" generator loss (the hinge-GAN G loss, not softplus)."""
    return -logits_fake.mean()


def quantize_8bit(images: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to 256 levels (like a saved image), as RAE's D step does to its fakes.

    RAE rounds (``torch.round``, half to even), it does not truncate, and on the [-1, 1] scale:
    ``round((clamp(2x - 1, -1, 1) + 1) * 127.5)``. The level is computed in that same float
    arithmetic, so that it is the release's level at the few inputs where float rounding decides
    (e.g. 0.1 -> 25, where ``round(0.1 * 255)`` gives 26); the result is level / 255 in [0, 1].
    """
    levels = torch.round(((images * 2.0 - 1.0).clamp(-1.0, 1.0) + 1.0) * 127.5)
    return levels / 255.0
