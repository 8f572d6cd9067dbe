"""Every config of a released file dry-runs offline with the release's parameter counts and latent shapes."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from rae.runner import main

ROOT = Path(__file__).resolve().parent.parent
HUB = "hf://nyu-visionx/RAE-collections"


def dry_run(name: str, capsys) -> str:
    """The dry run's printout, with gin's wrapped long bindings joined onto one line."""
    assert main(["--gin", str(ROOT / "experiments" / f"{name}.gin"), "--dry_run"]) == 0
    return re.sub(r" \\\n\s+", " ", capsys.readouterr().out)


@pytest.mark.parametrize("name, expected", [
    ("sample_ditdh_xl_512_ag", [
        "latent shape: (768, 32, 32)", "backbone: DiTDH, 839.6M parameters (839,560,532)",
        "guidance: Autoguidance, 196.8M parameters (196,750,676)", "autoguidance.scale = 1.5",
        "dinov2.input_size = 448", "ditdh.input_size = 32",
        f"GUIDANCE/autoguidance.checkpoint = '{HUB}/DiTs/Dinov2/wReg_base/ImageNet512/DiTDH-S_ep20/stage2_model.pt'",
        f"rae.decoder_path = '{HUB}/decoders/dinov2/wReg_base/ViTXL_n08_i512/model.pt'"]),
    ("reconstruct_mae_b", ["latent shape: (768, 16, 16)", "mae.input_size = 256",
                           f"rae.decoder_path = '{HUB}/decoders/mae/base_p16/ViTXL_n08/model.pt'"]),
    ("reconstruct_siglip2_b", ["latent shape: (768, 16, 16)", "siglip2.input_size = 256",
                               f"rae.stats_path = '{HUB}/stats/siglip2/base_p16_i256/ImageNet1k/stat.pt'"]),
    ("repa_sit_xl_512", ["latent shape: (4, 64, 64)", "backbone: SiT, 676.0M parameters (675,995,920)",
                         "repa_target/dinov2.input_size = 448", "sd_vae.image_size = 512"]),
])
def test_released_file_configs_dry_run(name, expected, capsys):
    out = dry_run(name, capsys)
    for line in expected:
        assert line in out, line
