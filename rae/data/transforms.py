"""Training crops for `image_folder` (its ``crop``), in place of ADM's centre crop.

``image_folder.crop = @dataset.resize_random_crop()`` gives RAE stage 1's training data; stage 2,
the latent statistics and every evaluation keep ADM's centre crop (``crop`` unset).
"""
from __future__ import annotations

from PIL import Image
from torchvision import transforms

from rae.registry import DATASETS

INTERPOLATIONS = tuple(mode.value for mode in transforms.InterpolationMode)


@DATASETS.register("resize_random_crop")
class ResizeRandomCrop:
    """RAE stage 1's training crop (``src/train_stage1.py``): resize the short side to
    ``int(resolution * resize_ratio)`` (384 for 256 px), then a random ``resolution`` square; no flip.

    Both steps are torchvision's, as released: ``Resize`` of a PIL image (PIL's bicubic, which
    always antialiases; the long side becomes ``int(short * long / short_before)``) and
    ``RandomCrop`` without padding, whose top then left offsets are two ``torch.randint`` draws from
    torch's global generator. The data loader seeds that generator in each worker (and the
    checkpoint restores it without workers), so the crops are fixed by the run's seed.
    """

    def __init__(self, resize_ratio: float = 1.5, interpolation: str = "bicubic") -> None:
        if resize_ratio < 1.0:
            raise ValueError(f"resize_random_crop.resize_ratio must be >= 1 (the crop must fit), got {resize_ratio}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"resize_random_crop.interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
        self.resize_ratio = resize_ratio
        self.interpolation = transforms.InterpolationMode(interpolation)

    def __call__(self, image: Image.Image, resolution: int) -> Image.Image:
        """A random ``resolution`` x ``resolution`` crop of ``image`` resized as above."""
        resized = transforms.Resize(int(resolution * self.resize_ratio), interpolation=self.interpolation)(image)
        return transforms.RandomCrop(resolution)(resized)
