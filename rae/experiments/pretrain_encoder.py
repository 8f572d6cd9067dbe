"""`pretrain_encoder`: MAE (He et al. 2022) pretraining of a `tiny_vit` on a dataset, so that an offline run
has a representation encoder of its own to freeze, as RAE freezes DINOv2, SigLIP2 or MAE.

Each step masks ``mask_ratio`` of every image's patches at random, encodes the visible ones, and a
light transformer (``MaskedPatchPredictor``, thrown away afterwards) predicts the masked patches'
pixels from the visible tokens and mask tokens; the loss is the mean squared error on masked pixels
(in the encoder's normalised pixel space, not per-patch normalised: the latents must keep colour and
brightness for RAE's decoder). The encoder's weights go to ``encoder.pt`` (``tiny_vit.weights``).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from rae.data.base import LabelledImages
from rae.decoders.blocks import Block
from rae.encoders.tiny_vit import LAYER_NORM_EPS, TinyViT
from rae.experiments.base import RunContext
from rae.experiments.small_training import SmallTraining
from rae.nn.patch import unpatchify
from rae.nn.position import sincos_2d_position_embedding
from rae.registry import EXPERIMENTS
from rae.train.options import OptimOptions

ENCODER_FILE = "encoder.pt"
MAE_OPTIM = OptimOptions(lr=2e-3, weight_decay=0.05, lr_schedule="cosine", warmup_steps=25, final_lr=1e-4,
                         grad_clip=None, checkpoint_every=250)


class MaskedPatchPredictor(nn.Module):
    """MAE's decoder: visible tokens and a shared mask token, at their positions -> pixels of every patch."""

    def __init__(self, encoder: TinyViT, width: int, depth: int, num_heads: int) -> None:
        super().__init__()
        side = encoder.token_grid[0]
        self.patch_size = encoder.patch_size
        self.embed = nn.Linear(encoder.hidden_size, width)
        self.mask_token = nn.Parameter(0.02 * torch.randn(1, 1, width))
        self.register_buffer("pos_embed", sincos_2d_position_embedding(width, side)[None], persistent=False)
        self.blocks = nn.ModuleList(Block(width, num_heads, 4 * width, LAYER_NORM_EPS) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.head = nn.Linear(width, self.patch_size ** 2 * 3)

    def forward(self, visible: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Tokens of the kept patches (B, K, C) and their indices (B, K) -> pixels (B, 3, H, W)."""
        tokens = self.embed(visible)
        x = self.mask_token.expand(tokens.shape[0], self.pos_embed.shape[1], -1)
        x = torch.scatter(x, 1, keep[..., None].expand_as(tokens), tokens) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return unpatchify(self.head(self.norm(x)), self.patch_size, 3)


class MAE(nn.Module):
    """The encoder being pretrained and its throw-away pixel predictor, trained together."""

    def __init__(self, encoder: TinyViT, predictor: MaskedPatchPredictor) -> None:
        super().__init__()
        self.encoder = encoder
        self.predictor = predictor

    def forward(self, images: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(prediction, target): both (B, 3, H, W) in the encoder's normalised pixel space."""
        pixels = self.encoder.preprocess(images)
        return self.predictor(self.encoder.visible_tokens(pixels, keep), keep), pixels


def masked_pixels(keep: torch.Tensor, num_patches: int, side: int, patch_size: int) -> torch.Tensor:
    """(B, 1, H, W): 1 on the pixels of the patches not in ``keep`` (B, K), 0 on the visible ones."""
    mask = torch.ones(keep.shape[0], num_patches, device=keep.device).scatter(1, keep, 0.0)
    return mask.view(-1, 1, side, side).repeat_interleave(patch_size, 2).repeat_interleave(patch_size, 3)


@EXPERIMENTS.register("pretrain_encoder")
class PretrainEncoder(SmallTraining):
    """MAE on ``dataset``: ``encoder`` (a fresh `tiny_vit`) learns to let a small predictor fill in masked patches.

    Args:
      encoder: the `tiny_vit` to pretrain (not the frozen one later stages load: that one reads
        ``encoder.pt`` through ``tiny_vit.weights``).
      dataset: images in [0, 1] at the encoder's input size.
      mask_ratio: share of patches hidden per image (MAE: 0.75).
      predictor_width, predictor_depth, predictor_heads: the size of the pixel predictor.
      batch_size, total_steps: the training's length; optim: AdamW and its schedule (`OptimOptions`;
        default ``MAE_OPTIM``, betas 0.9, 0.95 as MAE); log_every, num_workers: as stage 1.
      grid_size: images logged at the end as originals, masked inputs and predictions.
    """

    kind = "pretrain_encoder"
    output = ENCODER_FILE

    def __init__(self, encoder: TinyViT, dataset: LabelledImages, mask_ratio: float = 0.75,
                 predictor_width: int = 64, predictor_depth: int = 1, predictor_heads: int = 4,
                 batch_size: int = 64, total_steps: int = 500, optim: OptimOptions | None = None,
                 log_every: int = 50, num_workers: int = 0, grid_size: int = 8) -> None:
        optim = optim or dataclasses.replace(MAE_OPTIM)
        super().__init__(dataset, batch_size, total_steps, optim, log_every, num_workers)
        if not isinstance(encoder, TinyViT):
            raise ValueError(f"pretrain_encoder.encoder must be @encoder.tiny_vit(), got {type(encoder).__name__}")
        if dataset.resolution != encoder.input_size:
            raise ValueError(f"pretrain_encoder: the dataset's images are {dataset.resolution} px but "
                             f"tiny_vit.input_size is {encoder.input_size}; make them equal")
        self.num_patches = encoder.token_grid[0] ** 2
        self.keep = round(self.num_patches * (1 - mask_ratio))
        if not 0 < self.keep < self.num_patches:
            raise ValueError(f"pretrain_encoder.mask_ratio {mask_ratio} must leave between 1 and "
                             f"{self.num_patches - 1} of the {self.num_patches} patches visible")
        self.mae = MAE(encoder, MaskedPatchPredictor(encoder, predictor_width, predictor_depth, predictor_heads))
        self.grid_size = grid_size

    def models(self) -> dict[str, nn.Module]:
        return {"encoder": self.mae.encoder, "predictor": self.mae.predictor}

    def latent_shape(self) -> tuple[int, ...]:
        return (self.mae.encoder.hidden_size, *self.mae.encoder.token_grid)

    def trainable(self) -> nn.Module:
        return self.mae

    def weights_state(self) -> dict[str, torch.Tensor]:
        return self.mae.encoder.state_dict()

    def draw_keep(self, batch: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, K) indices of the visible patches: a uniform random subset per image (MAE's shuffle)."""
        noise = torch.rand(batch, self.num_patches, generator=generator).to(device)
        return noise.argsort(dim=1)[:, :self.keep]

    def loss(self, images: torch.Tensor, targets: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        keep = self.draw_keep(images.shape[0], images.device)
        prediction, pixels = self.mae(images, keep)
        mask = self._mask(keep)
        error = ((prediction.float() - pixels) ** 2 * mask).sum() / (mask.sum() * 3)
        return error, {}

    def _mask(self, keep: torch.Tensor) -> torch.Tensor:
        encoder = self.mae.encoder
        return masked_pixels(keep, self.num_patches, encoder.token_grid[0], encoder.patch_size)

    @torch.no_grad()
    def finish(self, ctx: RunContext) -> dict[str, Any]:
        """Log originals, masked inputs and predictions (visible patches pasted back) of the first images."""
        images = torch.stack([self.dataset[i][0] for i in range(min(self.grid_size, len(self.dataset)))])
        images = images.to(ctx.accelerator.device)
        keep = self.draw_keep(images.shape[0], images.device, torch.Generator().manual_seed(ctx.seed))
        prediction, _ = self.mae(images, keep)
        std = images.new_tensor(self.mae.encoder.pixel_std).view(1, 3, 1, 1)
        mean = images.new_tensor(self.mae.encoder.pixel_mean).view(1, 3, 1, 1)
        mask = self._mask(keep)
        filled = mask * (prediction.float() * std + mean).clamp(0, 1) + (1 - mask) * images
        grid = torch.cat([images, images * (1 - mask), filled])
        captions = [f"{kind} {i}" for kind in ("original", "visible", "MAE prediction") for i in range(len(images))]
        ctx.tracker.track_images("masked_predictions", grid, self.total_steps, captions=captions)
        return {}
