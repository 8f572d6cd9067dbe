"""Stage-1 decoder training through the runner: exact accumulation, exact resume, learning, paper config,
and the D step as RAE's src/train_stage1.py (its inputs, its lr schedule)."""
from __future__ import annotations

import copy
from pathlib import Path

import torch

import rae.runner as runner
from rae.encoders.tokens import tokens_to_latent
from rae.experiments.stage1 import Stage1
from rae.io import load
from rae.losses import DinoDiscriminator
from rae.runner import main
from rae.tracking.tracker import Tracker
from rae.train.checkpoint import Checkpointer
from rae.train.optim import lr_factor

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "experiments" / "stage1_tiny.gin"
# LPIPS and the GAN (generator and discriminator) active from the first step
ALL_LOSSES = ["stage1.disc_start_epoch = 0", "stage1.gan_start_epoch = 0", "embedded.size = 16",
              "optim.checkpoint_every = 1", "stage1.log_every = 1", "stage1.grid_every = 100"]


def train(root: Path, *bindings: str) -> dict:
    args = ["--gin", str(TINY), "--gin_param", f"run.run_root = '{root}'"]
    for binding in bindings:
        args += ["--gin_param", binding]
    assert main(args) == 0
    return Checkpointer(run_folder(root) / "checkpoints").load_latest()["state"]


def run_folder(root: Path) -> Path:
    return next((root / "stage1_tiny").iterdir())


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
    # Two steps: D sees the decoder after the step's own update, and its 8-bit rounding turns the
    # float noise between splits (which Adam amplifies from the third update on here) into whole levels.
    steps = "stage1.total_steps = 2"
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
            "--gin_param", "stage1.grid_every = 150", "--gin_param", "optim.checkpoint_every = 150"]
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
    # the release's stage-1 data (resize 384 + random crop 256, no flip) and D trunk (tanh GELU)
    assert "image_folder.crop = @dataset.resize_random_crop()" in out and "image_folder.random_flip = False" in out
    assert "resize_random_crop.resize_ratio = 1.5" in out and "dino_disc.gelu = 'tanh'" in out


def test_d_sees_fresh_8bit_reconstructions_of_clean_latents_by_the_updated_decoder(tmp_path, monkeypatch):
    """Step by step, D's fakes are the updated decoder's eval-mode, no-grad decode of the clean latents
    (no noise), rounded to 8 bits as RAE does (DiffAugment off, so D sees exactly them)."""
    seen, experiments = [], []
    forward, run = DinoDiscriminator.forward, Stage1.run

    def recording_forward(self, images):
        if self.heads[0].out.parametrizations.weight.original.requires_grad:  # inside the D step
            seen.append(images)
        return forward(self, images)

    monkeypatch.setattr(DinoDiscriminator, "forward", recording_forward)
    monkeypatch.setattr(Stage1, "run", lambda self, ctx: experiments.append(self) or run(self, ctx))
    train(tmp_path, *ALL_LOSSES, "stage1.total_steps = 3", "diffaug.prob = 0.0", "stage1.keep_checkpoints = 5")
    ae = experiments[0].autoencoder
    checkpoints = Checkpointer(run_folder(tmp_path) / "checkpoints")
    assert checkpoints.steps() == [1, 2, 3] and len(seen) == 3 * 4  # per step: 2 micro-batches of fakes, of reals
    previous = None
    for step in range(3):
        fakes, reals = torch.cat(seen[4 * step:4 * step + 2]), torch.cat(seen[4 * step + 2:4 * step + 4])
        assert not fakes.requires_grad
        decoder = copy.deepcopy(ae.decoder).eval()
        decoder.load_state_dict(load(checkpoints.path(step + 1))["state"]["decoder"])  # after update step + 1
        with torch.no_grad():
            expected = []
            for x in reals.split(4):  # the run's micro-batches
                z = ae.normalize(tokens_to_latent(ae.encoder(x), ae.encoder.token_grid))
                recon = ae.decode(z, decoder).float()
                expected.append(torch.round(((recon * 2 - 1).clamp(-1, 1) + 1) * 127.5) / 255)  # RAE's rounding
        expected = torch.cat(expected)
        # equal but where float noise (kernels on other tensor layouts) straddles a rounding boundary
        assert (fakes != expected).float().mean() < 1e-3 and (fakes - expected).abs().max() < 1.01 / 255
        assert torch.equal(fakes * 255, (fakes * 255).round())
        if previous is not None:  # the step's own update moved them (D does not see the pre-update decoder)
            with torch.no_grad():
                before = ae.decode(ae.normalize(tokens_to_latent(ae.encoder(reals), ae.encoder.token_grid)), previous)
            assert (torch.round(before.clamp(0, 1) * 255) / 255 != fakes).float().mean() > 0.1
        previous = decoder


def test_d_lr_schedule_counts_d_updates(tmp_path, monkeypatch):
    """D's first update (at step 8, epoch 1 of 64 images in batches of 8) uses the schedule's first
    lr, 1e-3 * 1/4 with 4 warmup steps (the cosine ends at the last step, 10), not the decoder's lr at
    step 8; D's scheduler counts updates."""
    recorded = {}

    class Recorder(Tracker):
        def __init__(self, **kwargs):
            pass

        def track(self, name, value, step, context=None):
            recorded.setdefault(name, {})[step] = value

    monkeypatch.setattr(runner, "AimTracker", Recorder)
    state = train(tmp_path, "stage1.total_steps = 10", "stage1.log_every = 1", "stage1.grid_every = 100",
                  "optim.checkpoint_every = 10", "stage1.gan_start_epoch = 100")
    disc_lr = recorded["disc_lr"]
    assert sorted(disc_lr) == [9, 10]  # logged after steps 9 and 10 (0-based steps 8 and 9)
    assert disc_lr[9] == 1e-3 * lr_factor(0, "cosine", 4, 10, 0.1) == 2.5e-4
    assert disc_lr[10] == 1e-3 * lr_factor(1, "cosine", 4, 10, 0.1)
    assert recorded["lr"][9] == 1e-3 * lr_factor(9, "cosine", 4, 10, 0.1)  # the decoder's, per step
    assert state["disc_scheduler"]["last_epoch"] == 2 and state["scheduler"]["last_epoch"] == 10
    assert recorded["loss/disc"][8] == 0.0 < recorded["loss/disc"][9]
