"""`embedded`: class-labelled images generated in code, for runs with no dataset and no network.

Each class is a shape in its own colour family; every image varies the shape's position,
size, rotation, shade and lighting, and the background's colour, gradient, stripes and
noise. Images are a pure function of (seed, index), at any resolution, rendered with
vectorised torch (256 images of 32 px in a few tens of milliseconds).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

from rae.registry import DATASETS

Tensor = torch.Tensor


# ---------------------------------------------------------------------------------------------
# Shapes: signed distances in the shape's own frame (radius about 1; negative inside)
# ---------------------------------------------------------------------------------------------
def _disk(x: Tensor, y: Tensor) -> Tensor:
    return torch.hypot(x, y) - 1.0


def _square(x: Tensor, y: Tensor) -> Tensor:
    return torch.maximum(x.abs(), y.abs()) - 0.8


def _triangle(x: Tensor, y: Tensor) -> Tensor:
    edges = [x * math.cos(a) + y * math.sin(a) for a in (math.pi / 2, math.pi * 7 / 6, math.pi * 11 / 6)]
    return torch.maximum(torch.maximum(edges[0], edges[1]), edges[2]) - 0.5


def _ring(x: Tensor, y: Tensor) -> Tensor:
    return (torch.hypot(x, y) - 0.75).abs() - 0.25


def _cross(x: Tensor, y: Tensor) -> Tensor:
    arm_a = torch.maximum(x.abs() - 1.0, y.abs() - 0.3)
    arm_b = torch.maximum(x.abs() - 0.3, y.abs() - 1.0)
    return torch.minimum(arm_a, arm_b)


def _star(x: Tensor, y: Tensor) -> Tensor:
    return torch.hypot(x, y) - (0.62 + 0.38 * torch.cos(5 * torch.atan2(y, x)))


def _dumbbell(x: Tensor, y: Tensor) -> Tensor:
    ends = torch.hypot(x.abs() - 0.6, y) - 0.4
    return torch.minimum(ends, torch.maximum(x.abs() - 0.6, y.abs() - 0.15))


def _crescent(x: Tensor, y: Tensor) -> Tensor:
    return torch.maximum(torch.hypot(x, y) - 1.0, 0.8 - torch.hypot(x - 0.5, y))


def _heart(x: Tensor, y: Tensor) -> Tensor:
    lobes = torch.minimum(torch.hypot(x - 0.42, y + 0.3), torch.hypot(x + 0.42, y + 0.3)) - 0.5
    point = (x.abs() + (y - 0.1).abs() - 0.85) / math.sqrt(2.0)
    return torch.minimum(lobes, point)


def _bar(x: Tensor, y: Tensor) -> Tensor:
    return torch.maximum(x.abs() - 1.0, y.abs() - 0.32)


SHAPES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "disk": _disk, "square": _square, "triangle": _triangle, "ring": _ring, "cross": _cross,
    "star": _star, "dumbbell": _dumbbell, "crescent": _crescent, "heart": _heart, "bar": _bar,
}
_SHAPE_FNS = list(SHAPES.values())


_HSV_OFFSETS = torch.tensor([5.0, 3.0, 1.0])


def hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """HSV in [0, 1] (any shape) -> RGB with a trailing channel axis."""
    k = (_HSV_OFFSETS + h[..., None] * 6.0) % 6.0
    return v[..., None] * (1 - s[..., None] * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))


# ---------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------
@DATASETS.register("embedded")
class EmbeddedDataset(torch.utils.data.Dataset):
    """``size`` images of ``resolution`` px; image i has label ``i % num_classes``.

    Class c draws shape ``c % 10`` in the hue family ``(c % 10) / 10`` (shifted by the golden
    ratio for every further ten classes), so up to ten classes differ in both shape and colour.

    ``in_memory``: render all images once, on first use, and serve them from memory (a small set
    that training reads for many epochs, as the quickstart's; 2,000 images of 32 px take 25 MB).

    How hard the images are: ``shape_scale`` (low, high) bounds the shape's radius as a fraction of
    the image's half-width, ``shape_offset`` its centre's distance from the middle along each axis
    (same unit), ``shape_rotation`` its angle (drawn from [0, shape_rotation) radians), and
    ``clutter`` scales the background's gradient, stripes and pixel noise (0: a plain tinted
    background). The defaults draw small shapes anywhere, at any angle, on a busy background.
    """

    def __init__(self, size: int = 10_000, resolution: int = 32, num_classes: int = 10, seed: int = 0,
                 in_memory: bool = False, shape_scale: tuple[float, float] = (0.3, 0.55),
                 shape_offset: float = 0.35, shape_rotation: float = 2 * math.pi, clutter: float = 1.0) -> None:
        if size <= 0 or resolution <= 0 or num_classes <= 0:
            raise ValueError(f"embedded: size, resolution and num_classes must be positive, got "
                             f"size={size}, resolution={resolution}, num_classes={num_classes}")
        pair = isinstance(shape_scale, (tuple, list)) and len(shape_scale) == 2
        if not (pair and 0 < shape_scale[0] <= shape_scale[1]):
            raise ValueError(f"embedded.shape_scale: expected (low, high) with 0 < low <= high, got {shape_scale}")
        low, high = shape_scale
        if shape_offset < 0 or shape_rotation < 0 or clutter < 0:
            raise ValueError(f"embedded: shape_offset, shape_rotation and clutter must be >= 0, got shape_offset="
                             f"{shape_offset}, shape_rotation={shape_rotation}, clutter={clutter}")
        self.size, self.resolution, self.num_classes, self.seed = size, resolution, num_classes, seed
        self.in_memory = in_memory
        self.shape_scale, self.shape_offset, self.shape_rotation = (low, high), shape_offset, shape_rotation
        self.clutter = clutter
        ranges = dict(_DRAWS, scale=(low, high), cx=(-shape_offset, shape_offset), cy=(-shape_offset, shape_offset),
                      angle=(0.0, shape_rotation))
        for name in _CLUTTER:
            ranges[name] = tuple(clutter * bound for bound in _DRAWS[name])
        self._low = torch.tensor([lo for lo, _ in ranges.values()])
        self._span = torch.tensor([hi - lo for lo, hi in ranges.values()])
        self._rendered: Tensor | None = None

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, int]]:
        """A whole batch rendered at once (the DataLoader calls this instead of one ``[i]`` per sample)."""
        outside = [i for i in indices if not 0 <= i < self.size]
        if outside:
            raise IndexError(f"embedded: indices {outside[:5]} out of range for {self.size} images")
        if self.in_memory:
            if self._rendered is None:
                self._rendered = torch.cat([self.images(range(start, min(start + 256, self.size)))
                                            for start in range(0, self.size, 256)])
            images = self._rendered[torch.tensor(indices, dtype=torch.long)]
        else:
            images = self.images(indices)
        return list(zip(images, [self.label(i) for i in indices]))

    def label(self, index: int) -> int:
        """Classes cycle through the indices, so every prefix of the dataset is balanced."""
        return index % self.num_classes

    def images(self, indices: Sequence[int], shapes: Sequence[int] | None = None) -> Tensor:
        """Render images ``indices`` at once: (B, 3, resolution, resolution) in [0, 1].

        ``shapes`` (one per index) draws those shapes in the images' own colours, everything else
        unchanged: images whose shape and colour disagree, for a judge that must read both apart.
        """
        labels = torch.tensor([self.label(i) for i in indices])
        draws = [np.random.default_rng([self.seed, i]) for i in indices]
        u = torch.from_numpy(np.stack([rng.random(len(_DRAWS)) for rng in draws])).float()
        noise = torch.stack([
            torch.randn(3, self.resolution, self.resolution,
                        generator=torch.Generator().manual_seed(int(rng.integers(2**62))))
            for rng in draws
        ])
        looks = dict(zip(_DRAWS, (self._low + self._span * u).T.reshape(len(_DRAWS), -1, 1, 1)))
        return _render(labels, looks, noise, self.resolution, None if shapes is None else torch.as_tensor(shapes))


# Every image's look is 18 uniform draws, each mapped to its range here.
_DRAWS = {
    "bg_hue": (0.0, 1.0), "bg_sat": (0.0, 0.3), "bg_val": (0.15, 0.85),
    "gradient_dir": (0.0, 2 * math.pi), "gradient": (-0.3, 0.3),
    "stripe_dir": (0.0, math.pi), "stripe_freq": (2.0, 8.0), "stripe": (0.0, 0.08), "stripe_phase": (0.0, 2 * math.pi),
    "noise": (0.0, 0.04),
    "cx": (-0.35, 0.35), "cy": (-0.35, 0.35), "scale": (0.3, 0.55), "angle": (0.0, 2 * math.pi),
    "hue": (-0.025, 0.025), "sat": (0.65, 1.0), "val": (0.7, 1.0), "light_dir": (0.0, 2 * math.pi),
}
_CLUTTER = ("gradient", "stripe", "noise")  # the background's detail, scaled by `clutter`


def _render(labels: Tensor, d: dict[str, Tensor], noise: Tensor, resolution: int,
            shapes: Tensor | None = None) -> Tensor:
    """Labels (B,), the draws of `_DRAWS` in their ranges (each (B, 1, 1)) and pixel noise (B, 3, R, R)
    -> images (B, 3, R, R); ``shapes`` (B,) replaces the labels' shapes (colours still follow the labels)."""
    axis = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution * 2 - 1
    x, y = axis.view(1, 1, -1), axis.view(1, -1, 1)

    # background: tinted grey, linear gradient, stripes, noise
    tint = hsv_to_rgb(d["bg_hue"], d["bg_sat"], d["bg_val"]).permute(0, 3, 1, 2)
    along = x * torch.cos(d["gradient_dir"]) + y * torch.sin(d["gradient_dir"])
    across = x * torch.cos(d["stripe_dir"]) + y * torch.sin(d["stripe_dir"])
    shade = 1 + d["gradient"] * along + d["stripe"] * torch.sin(math.pi * d["stripe_freq"] * across + d["stripe_phase"])
    background = tint * shade.unsqueeze(1) + d["noise"].unsqueeze(1) * noise

    # the shape's frame: translate, rotate, scale
    cos, sin = torch.cos(d["angle"]), torch.sin(d["angle"])
    dx, dy = x - d["cx"], y - d["cy"]
    qx, qy = (dx * cos + dy * sin) / d["scale"], (dy * cos - dx * sin) / d["scale"]
    shape = (labels if shapes is None else shapes) % len(_SHAPE_FNS)
    dist = torch.empty_like(qx)
    for k in shape.unique().tolist():
        rows = shape == k
        dist[rows] = _SHAPE_FNS[k](qx[rows], qy[rows])
    alpha = torch.sigmoid(-dist * d["scale"] * (resolution / 2)).unsqueeze(1)  # about one pixel of edge

    # the shape's colour: its class's hue family, jittered, lit from one side
    family = ((labels % 10) / 10 + (labels // 10) * 0.6180339887).view(-1, 1, 1)
    fill = hsv_to_rgb((family + d["hue"]) % 1, d["sat"], d["val"]).permute(0, 3, 1, 2)
    light = (torch.cos(d["light_dir"]) * qx + torch.sin(d["light_dir"]) * qy).clamp(-1, 1)
    fill = fill * (1 + 0.2 * light).unsqueeze(1)

    return (alpha * fill + (1 - alpha) * background).clamp(0, 1)


def preview_grid(n_per_class: int, resolution: int = 32, num_classes: int = 10, seed: int = 0) -> Tensor:
    """(3, num_classes*R, n_per_class*R) grid: one row per class, for a look at the dataset."""
    data = EmbeddedDataset(size=n_per_class * num_classes, resolution=resolution, num_classes=num_classes, seed=seed)
    images = data.images([c + j * num_classes for c in range(num_classes) for j in range(n_per_class)])
    r = resolution
    return images.view(num_classes, n_per_class, 3, r, r).permute(2, 0, 3, 1, 4).reshape(3, num_classes * r, -1)
