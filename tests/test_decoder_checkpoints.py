"""Every file that holds a trained decoder loads through ``rae.decoder_path``, with the key lists checked."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from rae.decoders.checkpoint import read_decoder_state
from rae.runner import main
from rae.train.checkpoint import UnreadableFile
from rae.weights import StateDictMismatch, UnusableWeights
from test_autoencoder import GOLDEN, tiny_rae

LOG = logging.getLogger("test")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def release_decoder() -> dict[str, torch.Tensor]:
    return torch.load(GOLDEN / "rae.pt", weights_only=True)["decoder_state_dict"]


def _release_training_checkpoint(decoder: dict[str, torch.Tensor], prefix: str = "") -> dict:
    """The layout of RAE's train_stage1.py ``ep-*.pt``: the whole autoencoder under model and ema, plus D."""
    encoder = {f"encoder.{k}": v for k, v in tiny_rae().encoder.state_dict().items()}
    live = {f"{prefix}decoder.{k}": v + 1.0 for k, v in decoder.items()}
    ema = {f"{prefix}decoder.{k}": v for k, v in decoder.items()}
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))]).state_dict()
    return {"model": encoder | live, "ema": encoder | ema, "optimizer": optimizer, "scheduler": None,
            "disc": {"heads.0.weight": torch.zeros(3)}, "disc_optimizer": optimizer, "disc_scheduler": None}


def _loaded_decoder(path: Path) -> dict[str, torch.Tensor]:
    model = tiny_rae(noise_tau=0.0, decoder_path=str(path))
    model.load_pretrained(allow_random=False, log=LOG)
    return model.decoder.state_dict()


@pytest.mark.parametrize("prefix", ["", "module.", "module._orig_mod."])
def test_release_training_checkpoint_gives_its_ema_decoder(tmp_path, release_decoder, prefix):
    torch.save(release_decoder, tmp_path / "model.pt")
    torch.save(_release_training_checkpoint(release_decoder, prefix), tmp_path / "ep-0000016.pt")
    expected = _loaded_decoder(tmp_path / "model.pt")
    loaded = _loaded_decoder(tmp_path / "ep-0000016.pt")
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key
    live = read_decoder_state(tmp_path / "ep-0000016.pt", prefer="model")
    assert torch.equal(live["decoder_pred.weight"], release_decoder["decoder_pred.weight"] + 1.0)


def test_a_key_outside_encoder_and_decoder_is_refused_by_name(tmp_path, release_decoder):
    checkpoint = _release_training_checkpoint(release_decoder)
    checkpoint["ema"]["projector.weight"] = torch.zeros(2)
    torch.save(checkpoint, tmp_path / "ep-0000001.pt")
    with pytest.raises(UnusableWeights, match=r"ep-0000001.pt: .*\['projector.weight'\]"):
        _loaded_decoder(tmp_path / "ep-0000001.pt")


def test_an_unexpected_decoder_key_is_still_a_mismatch(tmp_path, release_decoder):
    checkpoint = _release_training_checkpoint(release_decoder)
    checkpoint["ema"]["decoder.extra_layer.weight"] = torch.zeros(2)
    torch.save(checkpoint, tmp_path / "ep.pt")
    with pytest.raises(StateDictMismatch, match="extra_layer.weight"):
        _loaded_decoder(tmp_path / "ep.pt")


@pytest.mark.parametrize("content", [b"", b"plain text, not a checkpoint"])
def test_an_unreadable_decoder_file_is_named(tmp_path, content):
    (tmp_path / "model.pt").write_bytes(content)
    with pytest.raises(UnreadableFile, match=r"model.pt: cannot read it as a decoder checkpoint"):
        _loaded_decoder(tmp_path / "model.pt")


def test_our_stage1_checkpoints_and_decoder_ema_load_as_the_same_decoder(tmp_path):
    bindings = ["stage1.lpips = None", "stage1.lpips_weight = 0.0", "stage1.discriminator = None",
                "stage1.disc_weight = 0.0", "stage1.diffaug = None", "stage1.total_steps = 2",
                "optim.checkpoint_every = 2", "stage1.grid_every = 100", "embedded.size = 16"]
    args = ["--gin", str(ROOT / "experiments" / "stage1_tiny.gin"), "--gin_param", f"run.run_root = '{tmp_path}'"]
    assert main(args + [a for b in bindings for a in ("--gin_param", b)]) == 0
    run = next((tmp_path / "stage1_tiny").iterdir())
    step = next((run / "checkpoints").iterdir())
    ema = torch.load(run / "decoder_ema.pt", weights_only=True)
    from_step = read_decoder_state(step)
    assert from_step.keys() == ema.keys()
    assert all(torch.equal(from_step[k], ema[k]) for k in ema)
    live = read_decoder_state(step, prefer="model")
    assert any(not torch.equal(live[k], ema[k]) for k in ema)
    for path in (step, run / "decoder_ema.pt"):
        rc = main(["--gin", str(ROOT / "experiments" / "reconstruct_tiny.gin"), "--gin_param",
                   f"run.run_root = '{tmp_path / 'rec'}'", "--gin_param", f"rae.decoder_path = '{path}'",
                   "--gin_param", "embedded.size = 8", "--new_run"])
        assert rc == 0, path
