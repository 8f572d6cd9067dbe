"""The FID Inception-v3 (TensorFlow's 2015-12-05 graph, as ADM's evaluator uses) in PyTorch.

Built from torch-fidelity's TF-compatible blocks, which load torch-fidelity's converted
weights; it returns the three feature kinds ADM's evaluator reads from the TF graph:
``pool_3`` (2048), ``mixed_6/conv`` first 7 channels flattened in NHWC order (17*17*7 =
2023, for sFID), and the unbiased logits ``pool_3 @ W`` (1008, for IS).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch_fidelity.feature_extractor_inceptionv3 import (
    BasicConv2d, InceptionA, InceptionB, InceptionC, InceptionD, InceptionE_1, InceptionE_2,
)
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

from rae.hub import resolve
from rae.metrics.features import FeatureExtractor, InceptionFeatures
from rae.weights import Pretrained, missing_weights

WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{WEIGHTS_FILE}"
INPUT_SIZE = 299
SPATIAL_CHANNELS = 7  # ADM: spatial = mixed_6/conv[..., :7]


def default_weights_path() -> Path:
    """Where torch-fidelity (torch.hub) caches the converted weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


class InceptionV3(FeatureExtractor, Pretrained):
    """uint8 images of any size -> (pool3, sFID spatial, unbiased logits), TF-exact resize to 299."""

    def __init__(self, weights_path: str | None = None, download: bool = False) -> None:
        super().__init__()
        self.weights_path = weights_path
        self.download = download
        # Attribute names match torch-fidelity's, so its weight file loads as it is.
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE_1(1280)
        self.Mixed_7c = InceptionE_2(2048)
        self.fc = nn.Linear(2048, 1008)
        self.requires_grad_(False)
        self.eval()

    def weights_file(self) -> Path:
        """Where ``load_pretrained`` reads the weights: ``weights_path``, or torch-fidelity's file in the hub cache."""
        return resolve(self.weights_path, "the FID Inception weights") if self.weights_path else default_weights_path()

    def load_pretrained(self, allow_random: bool, log: logging.Logger) -> None:
        """Load the converted TF weights from ``weights_path`` or the torch.hub cache; download only if asked."""
        path = self.weights_file()
        if not path.is_file() and self.download and not self.weights_path:
            log.info("downloading the FID Inception weights from %s to %s", WEIGHTS_URL, path)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(WEIGHTS_URL, str(path))
        if not path.is_file():
            missing_weights(
                "the FID Inception-v3", str(path),
                f"Download {WEIGHTS_FILE} from {WEIGHTS_URL} into {default_weights_path().parent} "
                "(or pass weights_path, or download=True)", allow_random, log,
            )
            return
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

    def train(self, mode: bool = True) -> "InceptionV3":
        """Always in eval mode: batch norm uses the converted running statistics."""
        return super().train(False)

    def forward(self, images: torch.Tensor) -> InceptionFeatures:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images (B, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        x = interpolate_bilinear_2d_like_tensorflow1x(
            images.float(), size=(INPUT_SIZE, INPUT_SIZE), align_corners=False
        )
        x = (x - 128) / 128
        # stem: 299 -> 35
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        # 35 x 35 -> 17 x 17
        x = self.Mixed_6a(self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x))))
        x = self.Mixed_6c(self.Mixed_6b(x))
        # TF's mixed_6 is Mixed_6d; its "conv" is the 1x1 branch (after batch norm and ReLU).
        spatial = self.Mixed_6d.branch1x1(x)[:, :SPATIAL_CHANNELS]
        x = self.Mixed_6e(self.Mixed_6d(x))
        # 17 x 17 -> 8 x 8 -> pool_3
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        pool = x.mean(dim=(2, 3))
        logits = pool @ self.fc.weight.T
        return InceptionFeatures(pool=pool, spatial=spatial.permute(0, 2, 3, 1).flatten(1), logits=logits)
