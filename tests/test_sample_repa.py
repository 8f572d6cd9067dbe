"""REPA's released checkpoint layout samples through experiments/sample_repa_sit_xl.gin."""
from __future__ import annotations

import argparse
import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from rae.backbones.sit import SiT
from rae.repa.projector import Projectors
from rae.runner import main

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(importlib.util.find_spec("diffusers") is None,
                                reason="diffusers (the optional extra rae[vae]) is not installed")
TINY_SIT = dict(hidden_size=32, depth=2, num_heads=2, patch_size=2, input_size=8, in_channels=4, num_classes=10)


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    from diffusers import AutoencoderKL

    from test_sd_vae import TINY

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("sd_vae_ema")
    AutoencoderKL(**TINY).save_pretrained(folder)
    return folder


def _repa_checkpoint(path: Path, extra: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """REPA train.py's layout: model / ema state dicts holding SiT and projector keys, opt, args, steps."""
    torch.manual_seed(1)
    sit, projectors = SiT(**TINY_SIT), Projectors(32, 64, [16])
    with torch.no_grad():
        for p in [*sit.parameters(), *projectors.parameters()]:
            p.add_(0.05 * torch.randn_like(p))
    ema = sit.state_dict() | {f"projectors.{k}": v for k, v in projectors.state_dict().items()} | (extra or {})
    model = {k: v + 1.0 for k, v in ema.items()}
    torch.save({"model": model, "ema": ema, "opt": {"state": {}, "param_groups": []},
                "args": argparse.Namespace(model="SiT-XL/2", encoder_depth=8), "steps": 4000000}, path)
    return ema


def _sample(tmp_path: Path, weights: Path, vae: Path) -> int:
    bindings = ["sit.size = None", "sit.hidden_size = 32", "sit.depth = 2", "sit.num_heads = 2", "sit.patch_size = 2",
                "sit.input_size = 8", "sit.num_classes = 10", "sd_vae.image_size = 16", f"sd_vae.weights = '{vae}'",
                "sde.num_steps = 6", "sample.num_samples = 6", "sample.batch_size = 4", "sample.grid_size = 6",
                "sample.grid_rows = 3", f"sample.weights_path = '{weights}'", f"run.run_root = '{tmp_path / 'runs'}'"]
    return main(["--gin", str(ROOT / "experiments" / "sample_repa_sit_xl.gin"),
                 *[a for b in bindings for a in ("--gin_param", b)]])


def test_a_repa_checkpoint_with_projectors_samples(tmp_path, vae_dir, caplog):
    _repa_checkpoint(tmp_path / "last.pt")
    with caplog.at_level(logging.INFO):
        assert _sample(tmp_path, tmp_path / "last.pt", vae_dir) == 0
    run = next((tmp_path / "runs" / "sample_repa_sit_xl").iterdir())
    images = np.load(run / "samples.npz")["arr_0"]
    assert images.shape == (6, 16, 16, 3) and images.dtype == np.uint8
    assert "left out 6 projector tensors" in caplog.text


def test_a_checkpoint_with_a_foreign_key_is_refused_naming_it(tmp_path, vae_dir, capsys):
    _repa_checkpoint(tmp_path / "last.pt", extra={"text_embedder.weight": torch.zeros(3)})
    assert _sample(tmp_path, tmp_path / "last.pt", vae_dir) == 2
    err = capsys.readouterr().err
    assert "unexpected: text_embedder.weight" in err and "last.pt" in err and "Traceback" not in err


def test_the_paper_config_dry_runs_with_the_release_settings(capsys):
    assert main(["--gin", str(ROOT / "experiments" / "sample_repa_sit_xl.gin"), "--dry_run"]) == 0
    out = capsys.readouterr().out
    for line in ("sde.num_steps = 250", "cfg.scale = 1.8", "cfg.t_max = 0.7", "sample.labels = 'random'",
                 "sd_vae.weights = 'stabilityai/sd-vae-ft-ema'", "run.precision = 'fp32'"):
        assert line in out, line


def test_the_golden_repa_model_through_the_sample_experiments_loading_path(tmp_path):
    """repa_sit.pt, saved as REPA's train.py saves it, loads through `Sample.load_weights` of the REPA
    sampling config and reproduces REPA's forward and its Euler + CFG sampler."""
    from test_latent_cache import build

    golden = torch.load(ROOT / "tests" / "fixtures" / "golden" / "repa_sit.pt", weights_only=True)
    cfg, ref = golden["config"], golden["sampler"]
    kwargs = ref["kwargs"]
    torch.save({"ema": golden["state_dict"], "model": golden["state_dict"], "steps": 1,
                "args": argparse.Namespace(encoder_depth=cfg["encoder_depth"])}, tmp_path / "last.pt")
    sizes = ["sit.size = None", f"sit.hidden_size = {cfg['hidden_size']}", f"sit.depth = {cfg['depth']}",
             f"sit.num_heads = {cfg['num_heads']}", f"sit.patch_size = {cfg['patch_size']}",
             f"sit.input_size = {cfg['input_size']}", f"sit.in_channels = {cfg['in_channels']}",
             f"sit.num_classes = {cfg['num_classes']}", f"sit.mlp_ratio = {cfg['mlp_ratio']}",
             f"sd_vae.image_size = {cfg['input_size'] * 8}", "sd_vae.weights = None"]
    # REPA's euler_sampler (the golden's) instead of the config's SDE: its num_steps steps are num_steps + 1 points
    sampler = ["include 'repa/ode_euler_50.gin'", f"euler.num_steps = {kwargs['num_steps'] + 1}",
               f"cfg.scale = {kwargs['cfg_scale']}", f"cfg.t_min = {kwargs['guidance_low']}",
               f"cfg.t_max = {kwargs['guidance_high']}", f"sample.weights_path = '{tmp_path / 'last.pt'}'"]
    experiment = build(ROOT / "experiments" / "sample_repa_sit_xl.gin", sizes + sampler)
    experiment.load_weights(allow_random=True, log=logging.getLogger("test"))
    backbone = experiment.backbone.eval()
    x, t, y = golden["inputs"]["x"], golden["inputs"]["t"], golden["inputs"]["y"]
    velocity = experiment.guidance.velocity_fn(backbone, to_velocity=experiment.transport.velocity,
                                               num_classes=backbone.num_classes)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x, t, y), golden["outputs"]["x"], atol=1e-5, rtol=1e-4)
        out = experiment.sampler.sample(velocity, ref["latents"], ref["y"], path=experiment.transport.path)
    torch.testing.assert_close(out.double(), ref["output"], atol=1e-4, rtol=1e-4)
