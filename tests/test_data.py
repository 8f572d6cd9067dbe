"""Datasets and the resumable sampler: labels, ADM crop, bad files, synthetic classes, data order."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import gin
import numpy as np
import pytest
import torch
from PIL import Image

from rae.data.embedded import SHAPES, EmbeddedDataset, preview_grid
from rae.data.image_folder import ImageFolder, center_crop
from rae.data.loader import ResumableSampler, make_loader
from rae.registry import DATASETS

GIN_DIR = Path(__file__).resolve().parent.parent / "gin"


def save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def solid(h: int, w: int, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, dtype=np.uint8), (h, w, 3)).copy()


@pytest.fixture
def tree(tmp_path) -> Path:
    """Three classes (created out of order), images of assorted sizes and formats."""
    root = tmp_path / "train"
    save(root / "zebra" / "a.png", solid(50, 70, (0, 0, 255)))
    save(root / "apple" / "x.jpg", solid(64, 40, (255, 0, 0)))
    save(root / "apple" / "nested" / "y.png", solid(33, 33, (250, 0, 0)))
    save(root / "mango" / "m.PNG", solid(90, 90, (0, 255, 0)))
    (root / "mango" / "notes.txt").write_text("not an image")
    return root


# ---------------------------------------------------------------------------------------------
# image_folder
# ---------------------------------------------------------------------------------------------
def test_labels_follow_sorted_class_names_and_crops_are_square(tree):
    data = ImageFolder(str(tree), resolution=32)
    assert data.classes == ["apple", "mango", "zebra"] and data.num_classes == 3
    assert [data.path(i).name for i in range(len(data))] == ["x.jpg", "y.png", "m.PNG", "a.png"]
    assert data.labels.tolist() == [0, 0, 1, 2]
    colours = {0: 0, 1: 1, 2: 2}  # apple red, mango green, zebra blue
    for i in range(len(data)):
        image, label = data[i]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        assert 0 <= image.min() and image.max() <= 1
        assert image.mean(dim=(1, 2)).argmax().item() == colours[label]


def test_center_crop_keeps_the_middle_and_box_halves_first():
    # 64 x 128 (h x w), left half red, right half blue: halved once to 32 x 64, then the middle 32 columns
    pixels = np.concatenate([solid(64, 64, (255, 0, 0)), solid(64, 64, (0, 0, 255))], axis=1)
    out = np.asarray(center_crop(Image.fromarray(pixels), 32)).astype(int)
    assert out.shape == (32, 32, 3)
    assert (out[:, :15, 0] == 255).all() and (out[:, :15, 2] == 0).all()
    assert (out[:, 17:, 2] == 255).all() and (out[:, 17:, 0] == 0).all()
    # a 1-pixel checkerboard at 4x the size: BOX halving averages it to flat grey (bicubic alone would alias)
    board = (np.indices((128, 128)).sum(axis=0) % 2 * 255).astype(np.uint8)
    grey = np.asarray(center_crop(Image.fromarray(np.stack([board] * 3, -1)), 32)).astype(int)
    assert grey.shape == (32, 32, 3) and abs(grey.mean() - 127.5) < 1 and grey.std() < 1


def test_random_flip_mirrors_some_images(tmp_path):
    ramp = np.repeat(np.linspace(0, 255, 32)[None, :, None], 32, axis=0).repeat(3, axis=2)
    save(tmp_path / "only" / "ramp.png", ramp)
    torch.manual_seed(0)
    flips = [ImageFolder(str(tmp_path), resolution=32, random_flip=True)[0][0] for _ in range(20)]
    plain = ImageFolder(str(tmp_path), resolution=32)[0][0]
    mirrored = [torch.equal(f, plain.flip(-1)) for f in flips]
    assert all(m or torch.equal(f, plain) for m, f in zip(mirrored, flips))
    assert 0 < sum(mirrored) < 20


def test_unreadable_files_are_skipped_and_counted(tree, caplog):
    (tree / "apple" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    png = (tree / "zebra" / "a.png").read_bytes()
    (tree / "zebra" / "b_truncated.png").write_bytes(png[: len(png) // 2])
    data = ImageFolder(str(tree), resolution=16)
    assert len(data) == 6
    with caplog.at_level(logging.WARNING):
        items = [data[i] for i in range(len(data))]
        again = [data[i] for i in range(len(data))]
    assert data.skipped == 2
    assert caplog.text.count("skipping unreadable image") == 2  # once per file, not per visit
    assert "broken.jpg" in caplog.text and "b_truncated.png" in caplog.text
    names = [data.path(i).name for i in range(len(data))]
    broken = names.index("broken.jpg")
    assert torch.equal(items[broken][0], items[broken + 1][0])  # the next readable image stands in
    assert all(torch.equal(a[0], b[0]) for a, b in zip(items, again))


def test_skipped_count_is_shared_with_loader_workers(tree):
    (tree / "mango" / "bad.png").write_bytes(b"garbage")
    data = ImageFolder(str(tree), resolution=16)
    loader = make_loader(data, batch_size=5, sampler=ResumableSampler(len(data), shuffle=False), num_workers=1)
    assert sum(len(labels) for _, labels in loader) == 5
    assert data.skipped == 1


def test_empty_or_missing_folder_is_a_clear_error_on_first_use(tmp_path):
    missing = ImageFolder(str(tmp_path / "nowhere"))  # building scans nothing (dry runs need no data)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        len(missing)
    (tmp_path / "empty" / "some_class").mkdir(parents=True)
    with pytest.raises(ValueError, match=f"no images under {tmp_path / 'empty'}"):
        ImageFolder(str(tmp_path / "empty"))[0]


# ---------------------------------------------------------------------------------------------
# embedded
# ---------------------------------------------------------------------------------------------
def test_embedded_is_deterministic_at_any_resolution():
    a, b = EmbeddedDataset(size=40, resolution=17, seed=3), EmbeddedDataset(size=40, resolution=17, seed=3)
    assert torch.equal(a[7][0], b[7][0]) and a[7][1] == 7
    assert torch.equal(a.images([5, 7])[1], a[7][0])  # batch and single rendering agree
    assert not torch.equal(a[7][0], EmbeddedDataset(size=40, resolution=17, seed=4)[7][0])
    image, _ = EmbeddedDataset(size=4, resolution=48)[3]
    assert image.shape == (3, 48, 48) and 0 <= image.min() and image.max() <= 1
    with pytest.raises(IndexError):
        a[40]


def shape_colour(images: torch.Tensor) -> torch.Tensor:
    """(B, 3) mean colour weighted by saturation^4: the shape's colour, mostly ignoring the grey-ish background."""
    weight = (images.max(dim=1).values - images.min(dim=1).values) ** 4
    return (images * weight.unsqueeze(1)).sum(dim=(2, 3)) / weight.sum(dim=(1, 2)).unsqueeze(1)


def test_embedded_classes_are_distinct_yet_varied():
    """Classes are told apart from held-out images by colour alone, far above chance; images vary within a class."""
    labels = torch.arange(300) % 10
    train = EmbeddedDataset(size=300, resolution=16, seed=0).images(range(300))
    fresh = EmbeddedDataset(size=300, resolution=16, seed=1).images(range(300))
    centroids = torch.stack([shape_colour(train[labels == c]).mean(0) for c in range(10)])
    predicted = torch.cdist(shape_colour(fresh), centroids).argmin(dim=1)
    assert (predicted == labels).float().mean() > 0.7  # chance is 0.1
    same_class = train[labels == 0]
    assert same_class.std(dim=0).mean() > 0.1  # position, size, background differ
    assert len(SHAPES) == 10


def shape_centroid(images: torch.Tensor) -> torch.Tensor:
    """(B, 2) x, y pixel centroid of the pixels far from the top-left pixel's colour (the background's)."""
    weight = ((images - images[:, :, :1, :1]).abs().amax(dim=1) > 0.2).float()
    axis = torch.arange(images.shape[-1], dtype=torch.float32)
    total = weight.sum(dim=(1, 2))
    return torch.stack([(weight * axis).sum(dim=(1, 2)) / total, (weight * axis[:, None]).sum(dim=(1, 2)) / total], 1)


def test_embedded_difficulty_knobs():
    """shape_offset 0 centres every shape, clutter 0 leaves a flat background; the defaults spread and clutter."""
    disks = range(0, 400, 10)  # class 0: symmetric about its centre
    easy = EmbeddedDataset(size=400, resolution=32, shape_scale=(0.5, 0.5), shape_offset=0.0, shape_rotation=0.0,
                           clutter=0.0).images(disks)
    busy = EmbeddedDataset(size=400, resolution=32).images(disks)
    centre = torch.tensor([15.5, 15.5])
    assert (shape_centroid(easy) - centre).abs().max() < 1.0
    assert (shape_centroid(busy) - centre).abs().max() > 3.0
    corner = (slice(None), slice(None), slice(0, 4), slice(0, 4))  # outside any shape of radius 8 px at the centre
    assert easy[corner].flatten(2).std(dim=2).max() < 1e-4  # the shape's soft edge reaches it faintly
    assert busy[corner].flatten(2).std(dim=2).mean() > 0.01
    assert torch.equal(EmbeddedDataset(size=400, resolution=32, shape_scale=(0.3, 0.55)).images(disks), busy)
    for bad, field in [(dict(shape_scale=(0.6, 0.5)), "shape_scale"), (dict(shape_scale=(0.0, 0.5)), "shape_scale"),
                       (dict(shape_scale=0.5), "shape_scale"),
                       (dict(shape_offset=-0.1), "shape_offset"), (dict(clutter=-1.0), "clutter"),
                       (dict(shape_rotation=-1.0), "shape_rotation")]:
        with pytest.raises(ValueError, match=field):
            EmbeddedDataset(size=4, **bad)


def test_embedded_is_fast():
    """The DataLoader fetches a batch through ``__getitems__``: one vectorised render."""
    data = EmbeddedDataset(size=256, resolution=32)
    start = time.perf_counter()
    images, labels = next(iter(make_loader(data, 256, ResumableSampler(256, shuffle=False))))
    assert time.perf_counter() - start < 0.5
    assert images.shape == (256, 3, 32, 32) and labels.tolist() == [i % 10 for i in range(256)]
    assert torch.equal(images[100], data[100][0])


def test_preview_grid_has_one_row_per_class():
    grid = preview_grid(3, resolution=8, num_classes=4)
    assert grid.shape == (3, 4 * 8, 3 * 8)
    data = EmbeddedDataset(size=12, resolution=8, num_classes=4)
    assert torch.equal(grid[:, 8:16, 16:24], data[1 + 2 * 4][0])  # class 1, third sample


# ---------------------------------------------------------------------------------------------
# sampler and loader
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,world", [(10, 3), (12, 4), (7, 1)])
def test_shards_are_disjoint_and_cover_the_epoch(n, world):
    shards = [list(ResumableSampler(n, seed=5, rank=r, world_size=world)) for r in range(world)]
    flat = [i for s in shards for i in s]
    assert sorted(flat) == list(range(n))
    cut = [list(ResumableSampler(n, seed=5, rank=r, world_size=world, drop_last=True)) for r in range(world)]
    assert {len(s) for s in cut} == {n // world}
    assert len({i for s in cut for i in s}) == n // world * world


def test_order_depends_on_seed_and_epoch_only():
    first = list(ResumableSampler(50, seed=1))
    assert first == list(ResumableSampler(50, seed=1)) and sorted(first) != first
    assert first != list(ResumableSampler(50, seed=2))
    sampler = ResumableSampler(50, seed=1)
    list(sampler)
    assert sampler.epoch == 1 and list(sampler) != first
    assert list(ResumableSampler(50, shuffle=False)) == list(range(50))


def test_resume_continues_exactly():
    full = ResumableSampler(23, seed=9, rank=1, world_size=2)
    stream = [i for _ in range(3) for i in full]  # three epochs, uninterrupted
    per_epoch = full.num_samples
    for consumed in (0, 4, per_epoch, per_epoch + 5, 2 * per_epoch + per_epoch - 1):
        resumed = ResumableSampler(23, seed=9, rank=1, world_size=2)
        resumed.seek(consumed)
        epoch, index = divmod(consumed, per_epoch)
        assert (resumed.epoch, resumed.index) == (epoch, index) and len(resumed) == per_epoch - index
        rest = list(resumed) + [i for _ in range(2 - epoch) for i in resumed]
        assert rest == stream[consumed:]
    with pytest.raises(ValueError, match="index"):
        full.set_position(0, per_epoch + 1)


def test_loader_batches_follow_the_sampler_and_resume():
    data = EmbeddedDataset(size=20, resolution=8)
    sampler = ResumableSampler(20, seed=0)
    batches = [labels.tolist() for _, labels in make_loader(data, 4, sampler, drop_last=True)]
    order = ResumableSampler(20, seed=0).order(0).tolist()
    assert batches == [[i % 10 for i in order[k:k + 4]] for k in range(0, 20, 4)]
    resumed = ResumableSampler(20, seed=0)
    resumed.seek(8)
    tail = [labels.tolist() for _, labels in make_loader(data, 4, resumed)]
    assert tail == batches[2:]


def test_gin_fragments_build_the_datasets(tree):
    gin.clear_config()
    try:
        gin.parse_config_file(str(GIN_DIR / "data" / "embedded.gin"))
        embedded = gin.get_configurable("dataset.embedded")()
        gin.clear_config()
        gin.parse_config_file(str(GIN_DIR / "data" / "imagenet.gin"))
        gin.bind_parameter("image_folder.root", str(tree))
        folder = gin.get_configurable("dataset.image_folder")()
    finally:
        gin.clear_config()
    assert (len(embedded), embedded.resolution, embedded.num_classes) == (10000, 256, 10)
    assert folder.resolution == 256 and folder.random_flip and "embedded" in DATASETS.names()
