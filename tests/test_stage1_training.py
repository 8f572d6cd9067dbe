"""Stage-1 decoder training through the runner: exact accumulation, exact resume, learning, paper config."""
from __future__ import annotations

from pathlib import Path

import torch

from rae.runner import main
from rae.train.checkpoint import Checkpointer

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "experiments" / "stage1_tiny.gin"
# LPIPS and the GAN (generator and discriminator) active from the first step
ALL_LOSSES = ["stage1.disc_start_epoch = 0", "stage1.gan_start_epoch = 0", "embedded.size = 16",
              "stage1.checkpoint_every = 1", "stage1.log_every = 1", "stage1.grid_every = 100"]


def train(root: Path, *bindings: str) -> dict:
    args = ["--gin", str(TINY), "--gin_param", f"run.run_root = '{root}'"]
    for binding in bindings:
        args += ["--gin_param", binding]
    assert main(args) == 0
    run = next((root / "stage1_tiny").iterdir())
    return Checkpointer(run / "checkpoints").load_latest()["state"]


def assert_same_training(state: dict, expected: dict) -> None:
    """Decoder, EMA and discriminator heads of two stage-1 checkpoints agree to float noise as Adam
    amplifies it. Left out: the biases of the head convolutions that feed a per-sample batch norm,
    which cancels them, so their true gradient is zero and Adam turns float noise into full steps."""
    assert set(expected["disc_heads"])
    for name in ("decoder", "ema", "disc_heads"):
        for key, value in expected[name].items():
            if not key.endswith(("block.0.bias", "fn.0.bias")):
                torch.testing.assert_close(state[name][key], value, rtol=1e-3, atol=2e-5, msg=f"{name}.{key}")


def test_four_micro_batches_of_two_step_exactly_as_one_batch_of_eight(tmp_path):
    steps = "stage1.total_steps = 3"
    whole = train(tmp_path / "whole", *ALL_LOSSES, steps, "stage1.micro_batch_size = None")
    split = train(tmp_path / "split", *ALL_LOSSES, steps, "stage1.micro_batch_size = 2")
    assert_same_training(split, whole)
    assert any(not torch.equal(v, train(tmp_path / "other", *ALL_LOSSES, "stage1.total_steps = 1")["decoder"][k])
               for k, v in whole["decoder"].items())


def test_a_tiny_run_lowers_the_l1_loss(tmp_path, capsys):
    args = ["--gin", str(TINY), "--gin_param", f"run.run_root = '{tmp_path}'", "--gin_param", "stage1.lpips = None",
            "--gin_param", "stage1.lpips_weight = 0.0", "--gin_param", "stage1.discriminator = None",
            "--gin_param", "stage1.disc_weight = 0.0", "--gin_param", "stage1.diffaug = None",
            "--gin_param", "stage1.total_steps = 150", "--gin_param", "stage1.log_every = 10",
            "--gin_param", "stage1.grid_every = 150", "--gin_param", "stage1.checkpoint_every = 150"]
    from rae.tracking.tracker import Tracker

    class Recorder(Tracker):
        values: list[float] = []

        def track(self, name, value, step, context=None):
            if name == "loss/l1":
                Recorder.values.append(value)

        def __init__(self, **kwargs):
            pass

    import rae.runner as runner
    original = runner.AimTracker
    runner.AimTracker = Recorder
    try:
        assert main(args) == 0
    finally:
        runner.AimTracker = original
    first, last = Recorder.values[0], Recorder.values[-1]
    assert last < 0.6 * first, Recorder.values


def test_paper_config_dry_run_counts_the_xl_decoder_offline(tmp_path, capsys):
    rc = main(["--gin", str(ROOT / "experiments" / "rae_dinov2_b_decxl.gin"), "--dry_run",
               "--gin_param", f"run.run_root = '{tmp_path}'"])
    out = capsys.readouterr().out
    assert rc == 0 and "decoder: ViTDecoder, 415.1M parameters (415,056,640)" in out
    assert "latent shape: (768, 16, 16)" in out and not list(tmp_path.iterdir())
