"""Stage-2 training: exact gradient accumulation, exact resume, learning, REPA's two losses, caches, configs."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_latent_cache import ROOT, Recorder, build, make_cache, run_experiment

from rae.accelerator import Accelerator
from rae.data.latent_cache import CacheMismatch
from rae.experiments.stage2 import BatchLabelDropout, Stage2
from rae.runner import main
from rae.train.checkpoint import Checkpointer

TINY_GIN = ROOT / "experiments" / "stage2_tiny.gin"


class Interrupted(RuntimeError):
    """Stands in for a killed job."""


class CrashingRecorder(Recorder):
    """Fails when the loss of step ``crash_at`` is logged (after the session saved what it saves)."""

    def __init__(self, crash_at: int) -> None:
        super().__init__()
        self.crash_at = crash_at

    def track(self, name, value, step, context=None):
        if name == "loss" and step == self.crash_at:
            raise Interrupted(f"killed at step {step}")
        super().track(name, value, step, context)


def tiny(encoder_dir: Path, *extra: str) -> list[str]:
    """stage2_tiny.gin on the tiny DINOv2 fixture (32 x 4 x 4 latents), logging every step, no grids."""
    return [f"dinov2.weights = '{encoder_dir}'", "ditdh.in_channels = 32", "embedded.resolution = 56",
            "stage2.log_every = 1", "stage2.sample_every = 0", *extra]


def train(run_dir: Path, bindings: list[str], tracker: Recorder | None = None):
    """Build stage2_tiny with ``bindings``, run it; (experiment, summary, tracker, initial backbone weights)."""
    experiment = build(TINY_GIN, bindings)
    initial = {k: v.clone() for k, v in experiment.backbone.state_dict().items()}
    tracker = tracker or Recorder()
    summary = run_experiment(experiment, run_dir, tracker)
    return experiment, summary, tracker, initial


def latest_state(run_dir: Path) -> dict:
    return Checkpointer(run_dir / "checkpoints").load_latest()["state"]


def test_four_micro_batches_of_two_step_exactly_as_one_batch_of_eight(tmp_path, tiny_dinov2_registers_dir):
    runs = {}
    for micro in ("2", "None"):
        bindings = tiny(tiny_dinov2_registers_dir, "stage2.batch_size = 8", f"stage2.micro_batch_size = {micro}",
                        "stage2.total_steps = 3", "optim.lr = 1e-2", "optim.grad_clip = 0.5")
        runs[micro] = train(tmp_path / micro, bindings)
    (split, _, split_log, initial), (whole, _, whole_log, _) = runs["2"], runs["None"]
    for name in ("loss", "grad_norm"):  # the pre-clip norm is scale-sensitive where Adam's step is not
        assert split_log.scalars[name] == pytest.approx(whole_log.scalars[name], rel=1e-5)
    assert split_log.scalars["grad_norm"][1] > 0.5  # clipping was active, so the norm mattered
    moved = 0
    for key, value in whole.backbone.state_dict().items():
        torch.testing.assert_close(split.backbone.state_dict()[key], value, rtol=1e-4, atol=1e-5)  # 1e-3 of an lr step
        moved += not torch.equal(value, initial[key])
    assert moved > 10


def test_rerunning_after_a_crash_gives_the_losses_and_weights_of_an_uninterrupted_run(tmp_path,
                                                                                     tiny_dinov2_registers_dir):
    # 24 images in batches of 8: 3 steps per epoch, so the run crosses epochs; checkpoints at 3 and 6.
    bindings = tiny(tiny_dinov2_registers_dir, "embedded.size = 24", "stage2.total_steps = 7",
                    "optim.checkpoint_every = 3")
    _, _, full, _ = train(tmp_path / "full", bindings)
    with pytest.raises(Interrupted):
        train(tmp_path / "resumed", bindings, CrashingRecorder(crash_at=5))
    _, summary, rest, _ = train(tmp_path / "resumed", bindings)
    assert sorted(rest.scalars["loss"]) == [4, 5, 6, 7]  # resumed from the checkpoint at step 3
    for name in ("loss", "loss/diffusion", "grad_norm", "lr"):
        assert rest.scalars[name] == pytest.approx({s: full.scalars[name][s] for s in (4, 5, 6, 7)}, rel=1e-6)
    assert summary["steps"] == 7
    ema_full = torch.load(tmp_path / "full" / "ema.pt", weights_only=True)
    ema_resumed = torch.load(summary["ema"], weights_only=True)
    for key, value in ema_full.items():
        torch.testing.assert_close(ema_resumed[key], value, rtol=0, atol=0)
    final_full, final_resumed = latest_state(tmp_path / "full"), latest_state(tmp_path / "resumed")
    for key, value in final_full["backbone"].items():
        torch.testing.assert_close(final_resumed["backbone"][key], value, rtol=0, atol=0)
    assert final_resumed["data"] == final_full["data"] == {"epoch": 2, "consumed": 8}


def test_a_checkpoint_resumes_only_with_the_parallel_strategy_that_fixed_its_layout(tmp_path,
                                                                                     tiny_dinov2_registers_dir):
    # "fsdp" keys the optimiser state by parameter name (whole tensors), "ddp" by position
    fsdp = tiny(tiny_dinov2_registers_dir, "stage2.total_steps = 2", "stage2.parallel = 'fsdp'")
    train(tmp_path, fsdp)
    names = set(latest_state(tmp_path)["optimizer"]["state"])
    assert "backbone.x_embedder.proj.weight" in names and all(name.startswith("backbone.") for name in names)
    ddp = tiny(tiny_dinov2_registers_dir, "stage2.total_steps = 3", "stage2.parallel = 'ddp'")
    with pytest.raises(ValueError, match="stage2.parallel = 'fsdp', but this run has 'ddp'"):
        train(tmp_path, ddp)


def test_the_tiny_run_learns_and_logs_sample_grids(tmp_path, tiny_dinov2_registers_dir):
    bindings = tiny(tiny_dinov2_registers_dir, "stage2.sample_every = 15")
    experiment, summary, log, _ = train(tmp_path, bindings)
    losses = [log.scalars["loss"][s] for s in range(1, 31)]
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5])
    assert log.scalars["lr"][30] == pytest.approx(1e-4)
    assert {"images_per_s", "grad_norm", "epoch"} <= set(log.scalars)
    assert [(name, step) for name, _, step, _ in log.images] == [("samples", 15), ("samples", 30)]
    _, grid, _, captions = log.images[-1]
    assert grid.shape == (8, 3, 32, 32) and 0 <= grid.min() and grid.max() <= 1
    assert captions == [f"class {c}" for c in (0, 1, 2, 3, 5, 6, 7, 8)]
    ema = torch.load(summary["ema"], weights_only=True)
    assert ema.keys() == experiment.backbone.state_dict().keys()


def test_repa_alignment_logs_diffusion_and_alignment_losses_apart(tmp_path, tiny_dinov2_registers_dir,
                                                                  tiny_dinov2_dir):
    repa = ["stage2.alignment = @loss.repa()", "repa.encoders = [@repa_target/encoder.dinov2()]",
            f"repa_target/dinov2.weights = '{tiny_dinov2_dir}'", "repa_target/dinov2.registers = False",
            "repa_target/dinov2.input_size = 56", "repa_target/dinov2.final_norm_affine = True",
            "repa.hidden_size = 64", "repa.encoder_depth = 1", "repa.projector_dim = 16", "repa.proj_coeff = 0.5"]
    bindings = tiny(tiny_dinov2_registers_dir, "stage2.total_steps = 4", *repa)
    experiment, summary, log, _ = train(tmp_path, bindings)
    for step in range(1, 5):
        diffusion, alignment = log.scalars["loss/diffusion"][step], log.scalars["loss/alignment"][step]
        assert -1 <= alignment <= 1 and diffusion > 0
        assert log.scalars["loss"][step] == pytest.approx(diffusion + 0.5 * alignment, rel=1e-5)
    saved = latest_state(tmp_path)["alignment"]
    assert saved and all(key.startswith("projectors.") for key in saved)
    assert "repa" in experiment.tags() and "alignment" in experiment.models()
    assert summary["loss/alignment"] == log.scalars["loss/alignment"][4]


def test_training_on_a_latent_cache_checks_the_decoding_autoencoder(tmp_path, tiny_dinov2_registers_dir):
    cache = tmp_path / "cache"
    make_cache(tmp_path, cache, tiny_dinov2_registers_dir)
    on_cache = tiny(tiny_dinov2_registers_dir, "stage2.dataset = None", "stage2.latents = @dataset.latent_cache()",
                    f"latent_cache.path = '{cache}'", "stage2.total_steps = 2", "stage2.sample_every = 2")
    _, summary, log, _ = train(tmp_path / "run", on_cache)
    assert summary["steps"] == 2 and len(log.images) == 1

    stats = tmp_path / "stat.pt"
    torch.save({"mean": torch.zeros(1, 32, 1, 1), "var": torch.ones(1, 32, 1, 1)}, stats)
    with pytest.raises(CacheMismatch, match="but the autoencoder is .*they differ in stats"):
        train(tmp_path / "other", on_cache + [f"rae.stats_path = '{stats}'"])


def test_label_dropout_is_drawn_per_batch_and_not_again_in_the_forward_pass(tiny_dinov2_registers_dir):
    backbone = build(TINY_GIN, tiny(tiny_dinov2_registers_dir)).backbone.train()
    drop = BatchLabelDropout(backbone)
    assert backbone.training and not backbone.y_embedder.training
    torch.manual_seed(0)
    dropped = drop(torch.zeros(20000, dtype=torch.long))
    assert set(dropped.unique().tolist()) == {0, backbone.null_label}
    assert (dropped == backbone.null_label).float().mean().item() == pytest.approx(0.1, abs=0.01)
    x, t, y = torch.randn(4, 32, 4, 4), torch.rand(4), torch.arange(4)
    torch.testing.assert_close(backbone(x, t, y), backbone(x, t, y), rtol=0, atol=0)


@pytest.mark.parametrize("mode, expected", [("constant", [2e-4, 2e-4, 2e-4, 1.1e-4]),
                                            ("linear", [2e-4 * 2 / 3, 2e-4, 2e-4, 1.1e-4])])
def test_the_warmup_mode_shapes_the_logged_lr(tmp_path, tiny_dinov2_registers_dir, mode, expected):
    bindings = tiny(tiny_dinov2_registers_dir, "stage2.total_steps = 4", "optim.lr = 2e-4",
                    "optim.lr_schedule = 'linear'", "optim.warmup_steps = 3", "optim.decay_end_step = 5",
                    "optim.final_lr = 2e-5", f"optim.warmup_mode = '{mode}'")
    _, _, log, _ = train(tmp_path, bindings)
    assert [log.scalars["lr"][s] for s in (1, 2, 3, 4)] == pytest.approx(expected)  # the lr of the next step


class LinearEncoder(torch.nn.Module):
    """An autoencoder's encode: one linear map, recording the dtype it computed in."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)
        self.dtypes: list[torch.dtype] = []

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        out = self.proj(images)
        self.dtypes.append(out.dtype)
        return out


@pytest.mark.parametrize("autocast_encode, dtype", [(False, torch.float32), (True, torch.bfloat16)])
def test_images_are_encoded_in_fp32_unless_autocast_encode(autocast_encode, dtype):
    """Both releases encode outside mixed precision (RAE's train.py, REPA's offline fp32 moments)."""
    settings = type("Settings", (), {"micro_batch_size": 2, "autocast_encode": autocast_encode})()
    encoder, images = LinearEncoder(), torch.rand(4, 4)
    latents = Stage2._encode(settings, encoder, images, Accelerator(torch.device("cpu"), precision="bf16"))
    assert encoder.dtypes == [dtype, dtype] and latents.dtype == torch.float32
    if not autocast_encode:
        torch.testing.assert_close(latents, encoder.proj(images), rtol=0, atol=0)


@pytest.mark.parametrize("binding, message", [
    ("stage2.micro_batch_size = 3", "per-rank batch 8 .* not divisible by micro_batch_size 3"),
    ("ditdh.in_channels = 16", r"latents \(32, 4, 4\) but the backbone takes \(16, 4, 4\)"),
    ("stage2.latents = @dataset.latent_cache()", "exactly one"),
    ("optim.warmup_epochs = 1", "warmup in steps or in epochs, not both"),
    ("optim.warmup_mode = 'cosine'", "stage2.optim.warmup_mode = 'cosine': expected one of"),
    ("stage2.sample_labels = [3, 10]", r"sample_labels \[3, 10\] must be classes of the data, 0..9"),
])
def test_inconsistent_settings_fail_before_the_first_step(tmp_path, tiny_dinov2_registers_dir, binding, message):
    with pytest.raises(Exception, match=message):
        train(tmp_path, tiny(tiny_dinov2_registers_dir, "latent_cache.path = 'unused'", binding))
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("config, count", [("ditdh_xl", "838.7M parameters (838,675,796)"),
                                           ("ditdh_s", "196.5M parameters (196,455,764)")])
def test_paper_configs_dry_run_offline(config, count, tmp_path, capsys):
    rc = main(["--import", "rae.experiments.stage2", "--gin", str(ROOT / "experiments" / f"{config}.gin"),
               "--dry_run", "--gin_param", f"run.run_root = '{tmp_path}'"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"backbone: DiTDH, {count}" in out and "latent shape: (768, 16, 16)" in out
    assert "latent_cache.path" in out.splitlines()[-1]  # required, and never opened by the dry run
    # as released: seed 42, fp32, lr held at 2e-4 for 40 epochs then linear decay to 2e-5 at epoch 800
    for line in ("run.seed = 42", "run.precision = 'fp32'", "optim.warmup_mode = 'constant'",
                 "optim.warmup_epochs = 40", "optim.decay_end_epoch = 800", "optim.final_lr = 2e-05"):
        assert line in out, line
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# Two ranks (gloo on the CPU): DDP averages gradients, so both ranks hold the same weights
# ---------------------------------------------------------------------------------------------
def _rank(rank: int, port: int, run_dir: str, encoder_dir: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        experiment = build(TINY_GIN, tiny(Path(encoder_dir), "stage2.total_steps = 2", "stage2.batch_size = 8"))
        accelerator = Accelerator(torch.device("cpu"), rank=rank, world_size=2)
        run_experiment(experiment, Path(run_dir), accelerator=accelerator)
        torch.save(experiment.backbone.state_dict(), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_train_one_model(tmp_path, tiny_dinov2_registers_dir):
    with socket.socket() as probe:  # a port that is free now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_rank, args=(port, str(tmp_path / "run"), str(tiny_dinov2_registers_dir), str(tmp_path)), nprocs=2)
    weights = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for key, value in weights[0].items():
        torch.testing.assert_close(weights[1][key], value, rtol=0, atol=0)
    assert (tmp_path / "run" / "ema.pt").exists()
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["ckpt-000000002.pt"]
