"""RAE's GAN discriminator: a frozen DINO ViT-S/8 whose token maps feed trainable conv heads.

Facts from RAE's ``disc/dinodisc.py``: images are resized (bilinear) to 224 and normalised with
ImageNet statistics; the token maps (cls dropped, before the final norm) after blocks 2, 5, 8, 11
and after the last block each get a head; the logits of all heads are concatenated per image.
With the default taps the last block's map feeds two heads (the release's layout, kept so its
head count and capacity match). The release's private ViT uses the tanh-approximated GELU
although DINO was trained with the exact one; ``gelu = "tanh"`` (the default) matches the release,
whose numbers were made with it, and ``"none"`` gives the exact GELU DINO was trained with. The
release also zeroes the key biases, not copied here: softmax ignores them anyway.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Sequence

import timm
import torch
from huggingface_hub import try_to_load_from_cache
from torch import nn
from torch.nn import functional as F

from rae.losses.disc_heads import DiscHead
from rae.registry import LOSSES
from rae.weights import (
    Pretrained,
    first_existing,
    load_checked,
    missing_weights,
    read_state_dict,
)

GELU_APPROXIMATIONS = ("tanh", "none")  # nn.GELU's ``approximate``: RAE's release, DINO's training


@LOSSES.register("dino_disc")
class DinoDiscriminator(nn.Module, Pretrained):
    """Images (B, 3, H, W) in [0, 1] -> logits (B, heads * tokens); only ``heads`` train.

    ``weights``: a local ``.safetensors`` / ``.pth`` file of the backbone; without one the timm
    (Hugging Face) cache and the torch hub cache are searched. Optimise ``disc.heads.parameters()``.
    ``gelu``: the backbone MLPs' GELU approximation, "tanh" as RAE's release or "none" (exact, as DINO).
    """

    def __init__(
        self,
        weights: str | None = None,
        model: str = "vit_small_patch8_224.dino",
        input_size: int = 224,
        key_depths: Sequence[int] = (2, 5, 8, 11),
        kernel_size: int = 9,
        norm_eps: float = 1e-6,
        spectral_norm: bool = True,
        gelu: str = "tanh",
    ) -> None:
        super().__init__()
        if gelu not in GELU_APPROXIMATIONS:
            raise ValueError(f"dino_disc.gelu must be one of {GELU_APPROXIMATIONS}, got {gelu!r}")
        self.weights = weights
        self.input_size = input_size
        self.backbone = timm.create_model(model, pretrained=False, num_classes=0, img_size=input_size,
                                          act_layer=functools.partial(nn.GELU, approximate=gelu))
        self.backbone.requires_grad_(False).eval()
        depth = len(self.backbone.blocks)
        if any(not 0 <= d < depth for d in key_depths):
            raise ValueError(f"key_depths {tuple(key_depths)} must index the {depth} blocks of {model}")
        self.taps = (depth - 1, *key_depths)
        cfg = self.backbone.pretrained_cfg
        self.pixel_mean = tuple(cfg["mean"])
        self.pixel_std = tuple(cfg["std"])
        width = self.backbone.embed_dim
        self.heads = nn.ModuleList(DiscHead(width, kernel_size, norm_eps, spectral_norm) for _ in self.taps)

    def train(self, mode: bool = True) -> "DinoDiscriminator":
        """Heads follow ``mode``; the backbone stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self

    def requires_grad_(self, requires_grad: bool = True) -> "DinoDiscriminator":
        """Toggles the heads only (GAN loops switch D on and off); the backbone stays frozen."""
        self.heads.requires_grad_(requires_grad)
        return self

    def token_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Images in [0, 1] -> one (B, C, N) token map per head, in ``taps`` order."""
        x = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        x = (x - x.new_tensor(self.pixel_mean).view(1, 3, 1, 1)) / x.new_tensor(self.pixel_std).view(1, 3, 1, 1)
        depths = sorted(set(self.taps))
        maps = self.backbone.forward_intermediates(
            x, indices=depths, norm=False, output_fmt="NLC", intermediates_only=True
        )
        by_depth = dict(zip(depths, maps))
        return [by_depth[d].transpose(1, 2) for d in self.taps]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([head(m) for head, m in zip(self.heads, self.token_maps(images))], dim=1)

    def load_pretrained(self, allow_random: bool, log: logging.Logger) -> None:
        """Backbone weights from ``weights`` or the caches; the heads keep their initialisation."""
        candidates = [self.weights] if self.weights is not None else self._cache_candidates()
        path = first_existing(candidates)
        if path is None:
            cfg = self.backbone.pretrained_cfg
            tried = ", ".join(str(c) for c in candidates) or "no cached file"
            how = (f"Download {cfg.get('url')} (or timm's {cfg.get('hf_hub_id')} from the Hugging Face hub) and "
                   f"set dino_disc.weights to the file, or put it in {Path(torch.hub.get_dir()) / 'checkpoints'}")
            missing_weights("the DINO discriminator backbone", tried, how, allow_random, log)
            return
        load_checked(self.backbone, read_state_dict(path), "DINO discriminator backbone", path)
        log.info("DINO discriminator: loaded backbone %s", path)

    def _cache_candidates(self) -> list[str]:
        """Where timm would have put the backbone's weights: the HF hub cache, then torch hub's."""
        cfg = self.backbone.pretrained_cfg
        found: list[str] = []
        if cfg.get("hf_hub_id"):
            for filename in ("model.safetensors", "pytorch_model.bin"):
                cached = try_to_load_from_cache(cfg["hf_hub_id"], filename)
                if isinstance(cached, str):
                    found.append(cached)
        if cfg.get("url"):
            found.append(str(Path(torch.hub.get_dir()) / "checkpoints" / cfg["url"].rsplit("/", 1)[-1]))
        return found
