"""Floats to 8 bits as the releases store them (clamp, x 255, truncate), rounding as the option; the store,
its npz and grids follow the rule they are given."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rae.experiments.image_store import ImageStore, save_grid, to_uint8


def released_rae(x: torch.Tensor) -> torch.Tensor:
    """RAE's src/sample_ddp.py and src/stage1_sample_ddp.py: x.clamp(0, 1).mul(255).to(uint8)."""
    return x.clamp(0, 1).mul(255).to(torch.uint8)


def released_repa(x: torch.Tensor) -> torch.Tensor:
    """REPA's generate.py: torch.clamp(255. * x, 0, 255).to(uint8)."""
    return torch.clamp(255.0 * x, 0, 255).to(torch.uint8)


def images(seed: int = 0, n: int = 3, size: int = 8) -> torch.Tensor:
    """Floats around [0, 1] with values outside it, as a decoder gives them."""
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 1.2 - 0.1


def test_truncation_is_both_releases_and_rounding_the_option():
    x = torch.tensor([0.0, 0.5, 0.999, 1.0, 1.2, -0.1, 254.7 / 255, 3.2 / 255]).view(1, 1, 2, 4).expand(1, 3, 2, 4)
    assert to_uint8(x)[0, 0].flatten().tolist() == [0, 127, 254, 255, 255, 0, 254, 3]
    assert to_uint8(x, "round")[0, 0].flatten().tolist() == [0, 128, 255, 255, 255, 0, 255, 3]
    many = images(n=16, size=32)
    assert torch.equal(to_uint8(many), released_rae(many)) and torch.equal(to_uint8(many), released_repa(many))
    rounded = to_uint8(many, "round").int()
    assert ((rounded - to_uint8(many).int()) >= 0).all() and (rounded - to_uint8(many).int()).max() == 1
    exact = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    assert torch.equal(to_uint8(exact.float() / 255), exact)  # 8-bit values survive truncation exactly
    assert to_uint8(exact) is exact
    with pytest.raises(ValueError, match="quantize must be one of"):
        to_uint8(many, "floor")


@pytest.mark.parametrize("quantize", ["truncate", "round"])
def test_the_store_npz_and_grid_follow_the_rule(tmp_path, quantize):
    x, labels = images(), [3, 1, 4]
    store = ImageStore(tmp_path / "images", quantize)
    store.write([0, 1, 2], x, labels)
    expected = to_uint8(x, quantize).permute(0, 2, 3, 1).numpy()
    assert [store.read(i)[1] for i in range(3)] == labels
    np.testing.assert_array_equal(np.stack([store.read(i)[0] for i in range(3)]), expected)
    with np.load(store.pack_npz(tmp_path / "samples.npz", 3)) as npz:
        np.testing.assert_array_equal(npz["arr_0"], expected)
    grid = np.asarray(Image.open(save_grid(x, tmp_path / "grid.png", nrow=3, quantize=quantize)))
    np.testing.assert_array_equal(grid[2:10, 2:10], expected[0])


def test_the_default_store_is_the_releases_and_a_bad_rule_names_the_field(tmp_path):
    x = images()
    ImageStore(tmp_path).write([0, 1, 2], x, [0, 0, 0])
    np.testing.assert_array_equal(ImageStore(tmp_path).read(2)[0], released_rae(x[2]).permute(1, 2, 0).numpy())
    with pytest.raises(ValueError, match="quantize must be one of .* got 'nearest'"):
        ImageStore(tmp_path, "nearest")


def test_samples_are_truncated_by_default_and_rounded_on_request(tmp_path):
    from test_sample_experiment import arrays, sample

    stored = {}
    for quantize in ("truncate", "round"):
        rc, run = sample(tmp_path, quantize, f"sample.quantize = '{quantize}'", "sample.num_samples = 5")
        assert rc == 0
        stored[quantize] = arrays(run)[0].astype(int)
    step = stored["round"] - stored["truncate"]
    assert step.min() == 0 and step.max() == 1 and 0.2 < step.mean() < 0.8
    rc, _ = sample(tmp_path, "bad", "sample.quantize = 'floor'")
    assert rc == 2
