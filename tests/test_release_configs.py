"""Every config of a released file dry-runs offline with the release's parameter counts and latent shapes."""
from __future__ import annotations

import contextlib
import csv
import io
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


# ---------------------------------------------------------------------------------------------
# The released facts, one row each of tests/fixtures/released_facts.csv: (release file, key,
# released value, our experiment, the line its operative config must hold). A config that drifts
# from the release fails with its row. docs/paper_configs.md gives the same facts in words.
# ---------------------------------------------------------------------------------------------
RELEASED_FACTS_CSV = Path(__file__).parent / "fixtures" / "released_facts.csv"


def released_facts() -> list[tuple[str, str, str, str, str]]:
    """The rows of the released-facts table, in file order."""
    with RELEASED_FACTS_CSV.open(newline="") as f:
        return [(row["release_file"], row["key"], row["released"], row["experiment"], row["line"])
                for row in csv.DictReader(f)]


RELEASED_FACTS = released_facts()


@pytest.fixture(scope="module")
def operative_configs() -> dict[str, str]:
    """Each experiment's dry-run printout, made once (gin state is global: one run at a time)."""
    found = {}
    for name in sorted({row[3] for row in RELEASED_FACTS}):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["--gin", str(ROOT / "experiments" / f"{name}.gin"), "--dry_run"]) == 0, name
        found[name] = re.sub(r" \\\n\s+", " ", out.getvalue())
    return found


@pytest.mark.parametrize("source, key, released, experiment, line", RELEASED_FACTS,
                         ids=[f"{row[3]}:{row[1]}" for row in RELEASED_FACTS])
def test_released_fact(operative_configs, source, key, released, experiment, line):
    assert line in operative_configs[experiment], (
        f"experiments/{experiment}.gin drifted from the release: {source} has {key} = {released}, "
        f"so its operative config must hold `{line}`")
