"""LPIPS perceptual distance (Zhang et al. 2018, VGG16 trunk, v0.1 linear heads) over the `lpips` package."""
from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import lpips
import torch
from torch import nn

from rae.registry import LOSSES
from rae.weights import (
    Pretrained,
    first_existing,
    load_checked,
    missing_weights,
    read_state_dict,
)

VGG16_FILE = "vgg16-397923af.pth"
VGG16_URL = f"https://download.pytorch.org/models/{VGG16_FILE}"
LINEAR_HEADS = Path(lpips.__file__).resolve().parent / "weights" / "v0.1" / "vgg.pth"
# torchvision's vgg16.features indices -> lpips' slices (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
_SLICE_STARTS = (0, 4, 9, 16, 23)
_FEATURE = re.compile(r"^features\.(\d+)\.(.+)$")


@LOSSES.register("lpips")
class LPIPS(nn.Module, Pretrained):
    """Per-image LPIPS distance (B,) between images in [0, 1]; frozen and always in eval mode.

    Built with random weights, so construction reads no file: ``load_pretrained`` loads the
    linear heads shipped in the lpips wheel and the VGG16 trunk from ``vgg_weights`` or, without
    it, torch hub's cache (``$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth``).
    """

    def __init__(self, vgg_weights: str | None = None) -> None:
        super().__init__()
        self.vgg_weights = vgg_weights
        self.metric = build_vgg_lpips()
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "LPIPS":
        """Always eval: LPIPS is a fixed metric (its dropout must stay off)."""
        return super().train(False)

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Images and targets (B, 3, H, W) in [0, 1] -> (B,) distances; gradients flow to both."""
        return self.metric(images, targets, normalize=True).flatten()

    def load_pretrained(self, allow_random: bool, log: logging.Logger) -> None:
        """The wheel's linear heads, then the VGG16 trunk (refused when absent unless ``allow_random``)."""
        heads = nn.ModuleDict({f"lin{i}": lin for i, lin in enumerate(self.metric.lins)})
        load_checked(heads, read_state_dict(LINEAR_HEADS), "LPIPS linear heads", LINEAR_HEADS)
        candidates = [self.vgg_weights] if self.vgg_weights is not None else [
            Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE
        ]
        path = first_existing(candidates)
        if path is None:
            how = f"Download {VGG16_URL} into {Path(torch.hub.get_dir()) / 'checkpoints'} or pass lpips.vgg_weights"
            missing_weights("the LPIPS VGG16 trunk", ", ".join(map(str, candidates)), how, allow_random, log)
            return
        load_checked(self.metric.net, vgg_trunk(read_state_dict(path)), "LPIPS VGG16 trunk", path)
        log.info("LPIPS: loaded VGG16 trunk %s", path)


def build_vgg_lpips() -> lpips.LPIPS:
    """lpips' VGG LPIPS, random, on the current default device, without initialising the VGG16
    classifier that lpips builds and throws away (100M weights, seconds of CPU time)."""
    device = torch.get_default_device()
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchvision's note on its `pretrained` argument
        metric = lpips.LPIPS(net="vgg", pretrained=False, pnet_rand=True, verbose=False)
    metric.to_empty(device=device)
    for conv in metric.modules():
        if isinstance(conv, nn.Conv2d):
            conv.reset_parameters()
    metric.scaling_layer = lpips.ScalingLayer().to(device)  # constant buffers, made afresh
    return metric


def vgg_trunk(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision VGG16 keys ``features.i.*`` -> lpips' ``slice{k}.i.*``; the classifier is dropped."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = _FEATURE.match(key)
        if match:
            index = int(match.group(1))
            k = sum(index >= start for start in _SLICE_STARTS)
            out[f"slice{k}.{index}.{match.group(2)}"] = value
        elif not key.startswith("classifier."):
            out[key] = value
    return out
