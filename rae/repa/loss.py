"""`@loss.repa`: REPA's alignment loss, projector heads included, against frozen target encoders.

Before training, ``loss.check_backbone(backbone)``. A training step then runs the backbone with
``out, tokens = backbone(x_t, t, y, return_tokens_at=loss.encoder_depth)``, computes the diffusion
loss from ``out``, then ``alignment, metrics = loss(tokens, images)`` (the clean images of the
batch, in [0, 1]) and minimises ``diffusion + alignment``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from rae.backbones.base import Backbone
from rae.encoders.base import Encoder
from rae.nn.init import is_meta
from rae.registry import LOSSES
from rae.repa.alignment import grid_side, negative_cosine, resize_token_grid
from rae.repa.projector import Projectors
from rae.repa.targets import target_encoders


@LOSSES.register("repa")
class REPALoss(nn.Module):
    """proj_coeff * mean over targets of -cos(projector_i(tokens), encoder_i(images)) (REPA).

    ``encoders``: the frozen target encoders (DINOv2-B by default in REPA), or REPA's
    ``--enc-type`` string (``"dinov2-vit-b,clip-vit-L"``, built for ``resolution``-px images by
    `rae.repa.targets.repa_encoders`); each resizes the images to its own ``input_size``.
    One projector per target. ``hidden_size``: the backbone's token width at ``encoder_depth``.
    The projectors are the only trainable parameters here.
    """

    def __init__(
        self,
        encoders: Encoder | Sequence[Encoder] | str,
        hidden_size: int,
        encoder_depth: int = 8,
        proj_coeff: float = 0.5,
        projector_dim: int = 2048,
        resolution: int = 256,
    ) -> None:
        super().__init__()
        encoders = target_encoders(encoders, resolution)
        if encoder_depth < 1:
            raise ValueError(f"repa.encoder_depth counts backbone blocks from 1, got {encoder_depth}")
        if proj_coeff < 0:
            raise ValueError(f"repa.proj_coeff must be >= 0, got {proj_coeff}")
        self.encoders = nn.ModuleList(encoders)
        self.projectors = Projectors(hidden_size, projector_dim, [e.hidden_size for e in encoders])
        self.encoder_depth = encoder_depth
        self.proj_coeff = proj_coeff
        if not is_meta(self.projectors):
            self.projectors.init_weights()

    def check_backbone(self, backbone: Backbone) -> None:
        """Fail before training when ``backbone`` cannot feed this loss: depth out of range or width mismatch."""
        name = type(backbone).__name__
        if not 1 <= self.encoder_depth <= backbone.num_blocks:
            raise ValueError(
                f"repa.encoder_depth = {self.encoder_depth}, but {name} has blocks 1..{backbone.num_blocks}"
            )
        width = backbone.token_width(self.encoder_depth)
        if width != self.projectors.hidden_size:
            raise ValueError(
                f"repa.hidden_size = {self.projectors.hidden_size}, but {name}'s tokens after block "
                f"{self.encoder_depth} are {width} wide; set repa.hidden_size = {width}"
            )

    @torch.no_grad()
    def targets(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Images in [0, 1] (B, 3, H, W) -> each encoder's patch tokens, without any gradient path."""
        return [encoder(images) for encoder in self.encoders]

    def align(
        self, tokens: torch.Tensor, targets: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted alignment loss of backbone ``tokens`` (B, N, hidden) against precomputed ``targets``."""
        if len(targets) != len(self.projectors):
            raise ValueError(f"REPA has {len(self.projectors)} target encoders but got {len(targets)} target tensors")
        side = grid_side(tokens.shape[1], "backbone")
        projected = self.projectors(tokens)
        per_target = [
            negative_cosine(z, resize_token_grid(target.detach(), side)) for z, target in zip(projected, targets)
        ]
        align = torch.stack(per_target).mean()
        return self.proj_coeff * align, {"align_loss": align.detach()}

    def forward(self, tokens: torch.Tensor, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(proj_coeff * alignment loss, {"align_loss": unweighted loss}) for tokens and their clean images."""
        if images.shape[0] != tokens.shape[0]:
            raise ValueError(f"REPA got {tokens.shape[0]} token sets for {images.shape[0]} images")
        return self.align(tokens, self.targets(images))
