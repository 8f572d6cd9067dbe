"""PSNR and SSIM against independent formulas, and the reconstruct experiment through the runner:
ADM npz files, scores equal to a recomputation from them, Aim metrics, resume, two ranks, paper config."""
from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from aim import Repo
from PIL import Image
from scipy.ndimage import gaussian_filter

from rae.accelerator import Accelerator
from rae.config_errors import ConfigError
from rae.data.embedded import EmbeddedDataset
from rae.experiments.base import RunContext
from rae.experiments.image_store import to_uint8
from rae.metrics.pixel import psnr, ssim
from rae.runner import build_spec, main, parse_gin
from rae.tracking.tracker import Tracker

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "experiments" / "reconstruct_tiny.gin")
SMALL = ["embedded.size = 12", "reconstruct.batch_size = 5", "reconstruct.grid_size = 4"]


# ---------------------------------------------------------------------------------------------
# Pixel metrics
# ---------------------------------------------------------------------------------------------
def reference_ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """Wang et al.'s SSIM written out with scipy: gaussian filters (sigma 1.5, truncate 3.5 -> 11 taps)
    on each channel, the 5-pixel border dropped ('valid'), the map averaged per image."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(v: np.ndarray) -> np.ndarray:
        return gaussian_filter(v, sigma=1.5, truncate=3.5, mode="reflect")[5:-5, 5:-5]

    scores = []
    for x, y in zip(a.astype(np.float64), b.astype(np.float64)):
        maps = []
        for xc, yc in zip(x, y):
            mx, my = blur(xc), blur(yc)
            vx, vy, cxy = blur(xc * xc) - mx**2, blur(yc * yc) - my**2, blur(xc * yc) - mx * my
            maps.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
        scores.append(np.mean(maps))
    return np.array(scores)


def test_psnr_of_equal_images_is_infinite_and_of_a_constant_offset_analytic():
    a = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.8
    assert torch.isinf(psnr(a, a)).all()
    got = psnr(a, a + 0.05)
    assert got.shape == (2,) and got.dtype == torch.float64
    torch.testing.assert_close(got, torch.full((2,), 10 * math.log10(1 / 0.05**2), dtype=torch.float64))
    # Per image: one image off by 0.1 and one by 0.01 give 20 and 40 dB.
    offsets = torch.tensor([0.1, 0.01]).view(2, 1, 1, 1)
    torch.testing.assert_close(psnr(a, a + offsets), torch.tensor([20.0, 40.0], dtype=torch.float64))
    # The data range sets the scale: the same images in 0..255 score the same.
    torch.testing.assert_close(psnr(a * 255, (a + 0.05) * 255, data_range=255.0), got)


def test_ssim_matches_a_scipy_implementation_of_wang_et_al():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(3, 3, 24, 19, generator=g)
    b = (a + 0.2 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    b[2] = a[2].flip(-1)
    got = ssim(a, b)
    assert got.shape == (3,) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), reference_ssim(a.numpy(), b.numpy()), rtol=0, atol=1e-12)
    np.testing.assert_allclose(ssim(a * 255, b * 255, data_range=255.0).numpy(), got.numpy(), atol=1e-12)
    torch.testing.assert_close(ssim(a, a), torch.ones(3, dtype=torch.float64))
    assert ssim(a, (a + 0.05 * torch.randn(a.shape, generator=g)).clamp(0, 1)).min() > got[:2].max()


def test_pixel_metrics_refuse_mismatched_or_too_small_images():
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 15))
    with pytest.raises(ValueError, match="differ in shape"):
        ssim(torch.zeros(2, 3, 16, 16), torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        ssim(torch.zeros(3, 16, 16), torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match="smaller than the 11x11 window"):
        ssim(torch.zeros(1, 3, 10, 32), torch.zeros(1, 3, 10, 32))


# ---------------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------------
def reconstruct(tmp_path: Path, *bindings: str) -> tuple[int, Path | None]:
    args = ["--gin", TINY, "--gin_param", f"run.run_root = '{tmp_path / 'runs'}'"]
    for binding in [*SMALL, *bindings]:
        args += ["--gin_param", binding]
    rc = main(args)
    folders = sorted((tmp_path / "runs" / "reconstruct_tiny").glob("*"))
    return rc, folders[-1] if folders else None


def arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as data:
        return data["arr_0"], data["arr_1"]


def scores_of(folder: Path) -> dict[str, float]:
    """PSNR and SSIM recomputed from the two npz files, on the [0, 1] scale."""
    recon, reference = (torch.from_numpy(arrays(folder / f"{name}.npz")[0]).permute(0, 3, 1, 2).double() / 255
                        for name in ("reconstructions", "references"))
    return {"psnr": psnr(recon, reference).mean().item(), "ssim": ssim(recon, reference).mean().item()}


def test_reconstructions_npz_scores_and_aim_metrics(tmp_path):
    rc, run = reconstruct(tmp_path)
    assert rc == 0
    recon, labels = arrays(run / "reconstructions.npz")
    reference, ref_labels = arrays(run / "references.npz")
    assert recon.dtype == reference.dtype == np.uint8 and recon.shape == reference.shape == (12, 32, 32, 3)
    assert labels.dtype == np.int64 and labels.tolist() == ref_labels.tolist() == [i % 10 for i in range(12)]
    dataset = EmbeddedDataset(size=12, resolution=32)
    originals = to_uint8(torch.stack([dataset[i][0] for i in range(12)])).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(reference, originals)
    assert recon.std() > 0 and not np.array_equal(recon, reference)
    for folder in ("reconstructions", "references"):
        assert len(list((run / folder).glob("*.png"))) == 12

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["images"] == 12 and metrics["split"] == "val"
    assert all(math.isfinite(metrics[name]) for name in ("psnr", "ssim")) and 0 < metrics["psnr"] < 60
    expected = scores_of(run)
    assert metrics["psnr"] == pytest.approx(expected["psnr"], abs=1e-9)
    assert metrics["ssim"] == pytest.approx(expected["ssim"], abs=1e-9)
    grid = np.asarray(Image.open(run / "grid.png"))
    assert grid.shape == (2 + 2 * 34, 2 + 4 * 34, 3)  # two rows (originals, reconstructions) of four

    repo = Repo(str(tmp_path / "runs"))
    tracked = {m.name: (m.context.to_dict(), m.values.values_list()[-1])
               for m in repo.query_metrics("metric.name in ['psnr', 'ssim']").iter()}
    assert tracked["psnr"] == ({"split": "val"}, pytest.approx(metrics["psnr"]))
    assert tracked["ssim"] == ({"split": "val"}, pytest.approx(metrics["ssim"]))


def test_an_interrupted_run_redoes_only_the_missing_images_and_scores_all(tmp_path, capsys):
    rc, run = reconstruct(tmp_path)
    assert rc == 0
    first = {name: arrays(run / f"{name}.npz") for name in ("reconstructions", "references")}
    first_metrics = json.loads((run / "metrics.json").read_text())
    # A stop mid-way: two reconstructions never written, one reference neither, no npz files yet.
    for path in (run / "reconstructions" / "000001.png", run / "reconstructions" / "000007.png",
                 run / "references" / "000010.png", run / "reconstructions.npz", run / "references.npz",
                 run / "metrics.json", run / "DONE"):
        path.unlink()
    capsys.readouterr()
    rc, again = reconstruct(tmp_path)
    assert rc == 0 and again == run and "made_here: 3" in capsys.readouterr().out
    for name, (images, labels) in first.items():
        np.testing.assert_array_equal(arrays(run / f"{name}.npz")[0], images)
        np.testing.assert_array_equal(arrays(run / f"{name}.npz")[1], labels)
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["psnr"], metrics["ssim"]) == (first_metrics["psnr"], first_metrics["ssim"])


def test_reconstructions_are_truncated_by_default_and_rounded_on_request(tmp_path):
    log = logging.getLogger("test")
    stored = {}
    for quantize in ("truncate", "round"):
        parse_gin([TINY], [*SMALL, f"reconstruct.quantize = '{quantize}'"])
        experiment = build_spec(TINY).experiment
        experiment.load_weights(allow_random=True, log=log)
        torch.manual_seed(0)  # the same random decoder both times
        experiment.run(RunContext(Accelerator(torch.device("cpu")), Tracker(), tmp_path / quantize, seed=0, log=log))
        stored[quantize] = {name: arrays(tmp_path / quantize / f"{name}.npz")[0].astype(int)
                            for name in ("reconstructions", "references")}
    for name in ("reconstructions", "references"):  # the embedded originals are floats, not 8-bit values
        step = stored["round"][name] - stored["truncate"][name]
        assert step.min() == 0 and step.max() == 1 and 0.2 < step.mean() < 0.8  # half a level brighter on average
    with pytest.raises(ConfigError, match="reconstruct.quantize must be one of"):
        parse_gin([TINY], [*SMALL, "reconstruct.quantize = 'floor'"])
        build_spec(TINY)


def test_two_ranks_write_the_same_files_and_scores_as_one(tmp_path):
    log = logging.getLogger("test")
    parse_gin([TINY], SMALL)
    experiment = build_spec(TINY).experiment
    experiment.load_weights(allow_random=True, log=log)

    def run(folder: Path, rank: int, world_size: int) -> dict:
        acc = Accelerator(torch.device("cpu"), rank=rank, world_size=world_size)
        return experiment.run(RunContext(acc, Tracker(), folder, seed=0, log=log))

    one = run(tmp_path / "one", 0, 1)
    second = run(tmp_path / "two", 1, 2)  # a rank that is not the main one only writes its images
    assert second["made_here"] == 6 and "psnr" not in second
    assert sorted(p.name for p in (tmp_path / "two" / "reconstructions").glob("*.png")) == \
        [f"{i:06d}.png" for i in range(1, 12, 2)]
    main_rank = run(tmp_path / "two", 0, 2)
    assert main_rank["made_here"] == 6
    assert (main_rank["psnr"], main_rank["ssim"]) == (one["psnr"], one["ssim"])
    for name in ("reconstructions", "references"):
        for ours, theirs in zip(arrays(tmp_path / "one" / f"{name}.npz"), arrays(tmp_path / "two" / f"{name}.npz")):
            np.testing.assert_array_equal(ours, theirs)


@pytest.mark.slow
def test_two_gloo_processes_under_torchrun_match_one(tmp_path):
    bindings = [arg for binding in SMALL for arg in ("--gin_param", binding)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAE_DIST_TIMEOUT_S": "60"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "tools/run.py", "--gin", TINY, "--gin_param", f"run.run_root = '{tmp_path / 'two'}'",
                           *bindings], check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stderr[-3000:]
    rc, one = reconstruct(tmp_path)
    two = next((tmp_path / "two" / "reconstruct_tiny").iterdir())
    assert rc == 0 and json.loads((two / "metrics.json").read_text())["psnr"] == \
        json.loads((one / "metrics.json").read_text())["psnr"]
    for name in ("reconstructions", "references"):
        np.testing.assert_array_equal(arrays(two / f"{name}.npz")[0], arrays(one / f"{name}.npz")[0])


@pytest.mark.parametrize("binding, message", [
    ("reconstruct.num_images = 13", "reconstruct.num_images = 13, but the dataset has 12 images"),
    ("embedded.resolution = 48", "must match the dataset's resolution"),
])
def test_bad_settings_fail_naming_the_field(tmp_path, capsys, binding, message):
    rc, _ = reconstruct(tmp_path, binding)
    assert rc == 1 and message in capsys.readouterr().err


def test_released_dinov2_b_config_dry_runs_offline(tmp_path, capsys):
    rc = main(["--gin", str(ROOT / "experiments" / "reconstruct_rae_dinov2_b.gin"), "--dry_run",
               "--gin_param", f"run.run_root = '{tmp_path}'",
               "--gin_param", "image_folder.root = '/no/imagenet/val'",
               "--gin_param", "rae.stats_path = '/no/stat.pt'",
               "--gin_param", "rae.decoder_path = '/no/model.pt'"])
    out = capsys.readouterr().out
    assert rc == 0 and "autoencoder: RAE, 501.6M parameters (501,638,656)" in out
    assert "latent shape: (768, 16, 16)" in out and "required values not set" not in out
    assert "reconstruct.num_images = 50000" in out and "rae.noise_tau = 0.0" in out
    assert "image_folder.random_flip = False" in out and not list(tmp_path.iterdir())
    assert "run.precision = 'fp32'" in out and "reconstruct.quantize = 'truncate'" in out  # as released
