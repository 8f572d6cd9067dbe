"""Every PIL mode reads as the 8-bit RGB image it shows: 16-bit and float images are scaled, not
clipped to white (PIL's convert("RGB") on "I;16" saturates everything above 255)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rae.data.image_folder import ImageFolder, to_rgb

GREY = np.tile(np.linspace(0, 255, 16).round().astype(np.uint8), (4, 1))  # a horizontal ramp, black to white
RGB = Image.fromarray(np.stack([GREY] * 3, -1))
SIXTEEN = GREY.astype(np.uint16) * 257  # the same ramp at 16 bits: 0 .. 65535
BYTE_ORDER = {"I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2", "I;16N": "=u2"}


def _in_mode(mode: str) -> Image.Image:
    """The ramp as an image of ``mode``, each at the full scale of its pixel type."""
    if mode in BYTE_ORDER:
        return Image.frombytes(mode, (16, 4), SIXTEEN.astype(BYTE_ORDER[mode]).tobytes())
    if mode == "I":
        return Image.fromarray(SIXTEEN.astype(np.int32))
    if mode == "F":
        return Image.fromarray((GREY / 255.0).astype(np.float32))
    if mode == "1":
        return Image.fromarray(np.where(GREY >= 128, 255, 0).astype(np.uint8)).convert("1")
    return RGB.convert(mode)


MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "LA", "PA", "RGBX", "RGBa", "La",
         "I;16", "I;16L", "I;16B", "I;16N"]


@pytest.mark.parametrize("mode", MODES)
def test_every_pil_mode_converts_to_the_ramp_it_holds(mode):
    image = _in_mode(mode)
    assert image.mode == mode
    out = np.asarray(to_rgb(image)).astype(int)
    assert out.shape == (4, 16, 3) and image.mode == mode
    expected = np.where(GREY >= 128, 255, 0) if mode == "1" else GREY.astype(int)
    tolerance = 20 if mode in ("P", "PA") else 1  # the palette holds 216 web colours, not every grey
    assert np.abs(out - expected[..., None]).max() <= tolerance


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I", "F"])
def test_high_bit_depth_files_load_scaled_through_the_dataset(tmp_path, mode):
    (tmp_path / "cls").mkdir()
    image = _in_mode(mode).resize((64, 64), Image.Resampling.NEAREST)
    image.save(tmp_path / "cls" / ("ramp.png" if mode.startswith("I;16") else "ramp.tif"))
    pixels, _ = ImageFolder(str(tmp_path), resolution=16)[0]
    assert pixels.shape == (3, 16, 16)
    assert pixels.min() < 0.05 and pixels.max() > 0.95
    assert (pixels > 0.99).float().mean() < 0.2  # a ramp, not white: the clip made ~94% of it 1.0
