"""`reconstruct_image` (RAE's src/stage1_sample.py) and `pack_images` (RAE's pack_images.py) on tiny inputs."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rae.accelerator import Accelerator
from rae.experiments.base import RunContext
from rae.experiments.image_tools import PackImages, ReconstructImage, find_pack_images
from rae.runner import main
from rae.tracking.tracker import Tracker
from test_autoencoder import LOG, tiny_rae
from test_hub_paths import cache_file, offline_cache  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parent.parent


def adm_crop(image: Image.Image, size: int) -> np.ndarray:
    """ADM's center_crop_arr as RAE's pack_images.py has it, written out here as the reference."""
    if image.size == (size, size):
        return np.asarray(image)
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.Resampling.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.Resampling.BICUBIC)
    arr = np.asarray(image)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top:top + size, left:left + size]


def random_image(seed: int, width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture
def image_tree(tmp_path) -> Path:
    """PNGs and JPEGs (any case) at several depths and sizes, plus files pack_images.py leaves out."""
    root = tmp_path / "samples"
    (root / "b" / "deep").mkdir(parents=True)
    (root / "a").mkdir()
    random_image(0, 40, 24).save(root / "b" / "deep" / "x.png")
    random_image(1, 16, 16).save(root / "a" / "z.PNG")  # already the size: kept as it is
    random_image(2, 70, 90).save(root / "a" / "y.jpg", quality=90)
    random_image(3, 33, 20).convert("L").save(root / "c.jpeg")  # grey: packed as RGB
    random_image(4, 20, 20).save(root / "a" / "skipped.bmp")
    (root / "notes.txt").write_text("not an image")
    return root


def test_pack_images_packs_every_image_sorted_and_centre_cropped(image_tree, tmp_path):
    expected_order = [image_tree / "a" / "y.jpg", image_tree / "a" / "z.PNG", image_tree / "b" / "deep" / "x.png",
                      image_tree / "c.jpeg"]
    assert find_pack_images(image_tree) == expected_order
    rc = main(["--gin", str(ROOT / "experiments/pack_images.gin"),
               "--gin_param", f"pack_images.folder = '{image_tree}'", "--gin_param", "pack_images.resolution = 16",
               "--gin_param", f"run.run_root = '{tmp_path / 'runs'}'"])
    assert rc == 0
    (npz_file,) = (tmp_path / "runs" / "pack_images").glob("*/samples.npz")
    with np.load(npz_file) as npz:
        assert list(npz) == ["arr_0"]
        packed = npz["arr_0"]
    assert packed.shape == (4, 16, 16, 3) and packed.dtype == np.uint8
    for got, path in zip(packed, expected_order):
        with Image.open(path) as image:
            np.testing.assert_array_equal(got, adm_crop(image.convert("RGB"), 16), err_msg=str(path))
    with Image.open(expected_order[1]) as image:
        np.testing.assert_array_equal(packed[1], np.asarray(image))  # same size: untouched


def test_pack_images_takes_the_first_max_images_and_names_the_output(image_tree, tmp_path):
    ctx = RunContext(Accelerator(torch.device("cpu")), Tracker(), tmp_path / "run", log=LOG)
    summary = PackImages(image_tree, resolution=8, max_images=2, output="two.npz").run(ctx)
    assert summary["images"] == 2 and summary["found"] == 4 and summary["npz"] == str(tmp_path / "run" / "two.npz")
    with np.load(summary["npz"]) as npz:
        assert npz["arr_0"].shape == (2, 8, 8, 3)
        with Image.open(image_tree / "a" / "y.jpg") as first:
            np.testing.assert_array_equal(npz["arr_0"][0], adm_crop(first.convert("RGB"), 8))


@pytest.mark.parametrize("make, message", [
    (lambda root: (root / "img.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken"), "img.png is not a readable image"),
    (lambda root: (root / "notes.txt").write_text("x"), "no .png, .jpg, .jpeg images under"),
])
def test_pack_images_refuses_unreadable_or_missing_images_naming_them(tmp_path, capsys, make, message):
    root = tmp_path / "samples"
    root.mkdir()
    make(root)
    rc = main(["--gin", str(ROOT / "experiments/pack_images.gin"), "--gin_param", f"pack_images.folder = '{root}'",
               "--gin_param", f"run.run_root = '{tmp_path / 'runs'}'"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("cannot run: pack_images.folder:") and message in err


def reconstruct(tmp_path: Path, image: str, **kwargs) -> tuple[dict, torch.nn.Module]:
    autoencoder = tiny_rae(noise_tau=0.5)
    torch.manual_seed(0)
    with torch.no_grad():  # a decoder that is not its zero-ish initialisation
        for p in autoencoder.decoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    experiment = ReconstructImage(autoencoder, image, **kwargs)
    ctx = RunContext(Accelerator(torch.device("cpu")), Tracker(), tmp_path / "run", log=logging.getLogger("test"))
    return experiment.run(ctx), autoencoder


def test_reconstruct_image_writes_the_reconstruction_of_the_whole_image(tmp_path):
    random_image(5, 50, 30).save(tmp_path / "cat.png")
    summary, autoencoder = reconstruct(tmp_path, str(tmp_path / "cat.png"))
    size = autoencoder.decoder.image_size
    with Image.open(summary["reconstruction"]) as png:
        written = np.asarray(png)
    assert summary["reconstruction"] == str(tmp_path / "run" / "recon.png") and written.shape == (*size, 3)
    # as src/stage1_sample.py: the whole image (squeezed to the encoder's input by encode), eval mode, no noise
    with Image.open(tmp_path / "cat.png") as image:
        x = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        latent = autoencoder.eval().encode(x)
        expected = (autoencoder.decode(latent).clamp(0, 1) * 255).round().to(torch.uint8)[0].permute(1, 2, 0)
    np.testing.assert_array_equal(written, expected.numpy())
    assert summary["input_shape"] == (1, 3, 30, 50) and summary["latent_shape"] == tuple(latent.shape)
    assert "psnr" not in summary  # the input and the reconstruction differ in size


def test_reconstruct_image_with_a_centre_crop_reports_psnr_and_reads_hub_paths(tmp_path, offline_cache):
    source = tmp_path / "big.png"
    random_image(6, 64, 48).save(source)
    cache_file(offline_cache, "org/images", "cat.png", source.read_bytes())
    summary, autoencoder = reconstruct(tmp_path, "hf://org/images/cat.png", resolution=32, output="cat_recon.png")
    assert autoencoder.decoder.image_size == (32, 32) and summary["input_shape"] == (1, 3, 32, 32)
    with Image.open(source) as image, Image.open(summary["reconstruction"]) as png:
        reference = torch.from_numpy(adm_crop(image.convert("RGB"), 32)).double()
        mse = (torch.from_numpy(np.asarray(png)).double() - reference).square().mean()
    assert summary["psnr"] == pytest.approx(float(10 * torch.log10(255**2 / mse)))
    with Image.open(summary["comparison"]) as grid:
        assert grid.size == (2 * 32 + 3 * 2, 32 + 2 * 2)  # original and reconstruction side by side


def run_reconstruct_image(tmp_path: Path, image: Path) -> int:
    """The runner's exit code for ``reconstruct_image`` of ``image`` with the tiny autoencoder, runs under tmp_path."""
    return main(["--gin", str(ROOT / "experiments/reconstruct_tiny.gin"),
                 "--gin_param", "run.experiment = @experiment.reconstruct_image()",
                 "--gin_param", "reconstruct_image.autoencoder = @autoencoder.rae()",
                 "--gin_param", f"reconstruct_image.image = '{image}'",
                 "--gin_param", f"run.run_root = '{tmp_path / 'runs'}'"])


def test_reconstruct_image_refuses_a_missing_image(tmp_path, capsys):
    rc = run_reconstruct_image(tmp_path, tmp_path / "nope.png")
    assert rc == 2
    assert f"cannot run: reconstruct_image.image: no such file {tmp_path / 'nope.png'}" in capsys.readouterr().err


def test_reconstruct_image_runs_through_the_runner(tmp_path):
    random_image(7, 32, 32).save(tmp_path / "img.png")
    rc = run_reconstruct_image(tmp_path, tmp_path / "img.png")
    assert rc == 0
    (folder,) = (tmp_path / "runs" / "reconstruct_tiny").iterdir()
    with Image.open(folder / "recon.png") as png:
        assert png.size == (32, 32) and png.mode == "RGB"
    assert (folder / "comparison.png").is_file() and (folder / "operative_config.gin").is_file()
    assert os.path.getsize(folder / "recon.png") > 0
