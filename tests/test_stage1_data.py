"""RAE stage 1's training crop (`resize_random_crop`): sizes, the release's exact ops, seeding, gin."""
from __future__ import annotations

from pathlib import Path

import gin
import numpy as np
import pytest
import torch
from PIL import Image

from rae.data.image_folder import ImageFolder
from rae.data.loader import ResumableSampler, make_loader
from rae.data.transforms import ResizeRandomCrop
from rae.registry import DATASETS


def noise_image(h: int, w: int, seed: int = 0) -> Image.Image:
    """An RGB image of random pixels (every crop position gives different pixels)."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize(("h", "w", "resized"), [(300, 500, (384, 640)), (500, 300, (640, 384)),
                                                 (256, 256, (384, 384)), (1000, 999, (384, 384))])
def test_resize_random_crop_is_torchvisions_resize_then_random_crop(h, w, resized):
    image = noise_image(h, w)
    torch.manual_seed(3)
    out = ResizeRandomCrop()(image, 256)
    assert out.size == (256, 256)
    # by hand: PIL bicubic to short side 384 (long side int(384 * long / short)), top then left offsets
    big = image.resize(resized[::-1], resample=Image.Resampling.BICUBIC)
    torch.manual_seed(3)
    top = int(torch.randint(0, resized[0] - 256 + 1, (1,)))
    left = int(torch.randint(0, resized[1] - 256 + 1, (1,)))
    assert np.array_equal(np.asarray(out), np.asarray(big.crop((left, top, left + 256, top + 256))))


def test_resize_random_crop_follows_the_seed_and_the_resolution():
    image = noise_image(120, 160)
    crop = ResizeRandomCrop()
    torch.manual_seed(0)
    first = [np.asarray(crop(image, 32)) for _ in range(4)]
    torch.manual_seed(0)
    again = [np.asarray(crop(image, 32)) for _ in range(4)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert len({a.tobytes() for a in first}) > 1  # the position is random
    assert first[0].shape == (32, 32, 3) and np.asarray(ResizeRandomCrop(1.0)(image, 64)).shape == (64, 64, 3)


def test_resize_random_crop_refuses_bad_settings():
    with pytest.raises(ValueError, match="resize_ratio must be >= 1"):
        ResizeRandomCrop(0.5)
    with pytest.raises(ValueError, match="interpolation must be one of"):
        ResizeRandomCrop(interpolation="cubic")


@pytest.fixture
def folder(tmp_path) -> Path:
    for i in range(4):
        path = tmp_path / "train" / f"class{i % 2}" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        noise_image(48 + 8 * i, 64, seed=i).save(path)
    return tmp_path / "train"


def test_image_folder_with_the_crop_is_seeded_through_the_loader(folder):
    data = ImageFolder(str(folder), resolution=32, crop=ResizeRandomCrop())
    assert data[0][0].shape == (3, 32, 32)

    def epoch(seed: int, workers: int) -> torch.Tensor:
        torch.manual_seed(seed)
        loader = make_loader(data, 2, ResumableSampler(len(data), seed=seed), num_workers=workers)
        return torch.cat([images for images, _ in loader])

    assert torch.equal(epoch(0, 0), epoch(0, 0)) and not torch.equal(epoch(0, 0), epoch(1, 0))
    assert torch.equal(epoch(0, 1), epoch(0, 1))


def test_gin_binds_the_crop_into_image_folder(folder):
    gin.clear_config()
    try:
        gin.parse_config(f"""
            image_folder.root = '{folder}'
            image_folder.resolution = 32
            image_folder.crop = @dataset.resize_random_crop()
            resize_random_crop.resize_ratio = 2.0
        """)
        data = gin.get_configurable("dataset.image_folder")()
    finally:
        gin.clear_config()
    assert "resize_random_crop" in DATASETS.names()
    assert isinstance(data.crop, ResizeRandomCrop) and data.crop.resize_ratio == 2.0
    assert data[1][0].shape == (3, 32, 32)
