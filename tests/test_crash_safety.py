"""Nothing lost: unreadable checkpoints are refused and kept, resumed runs log what uninterrupted ones
do, identical commands save identical RNG states, SIGTERM and Ctrl-C stop cleanly, a run folder is
held by one process at a time, and tools/compare.py lists runs that are still active."""
from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import torch
from aim import Repo

from rae.accelerator import Accelerator
from rae.data.latent_cache import CacheIndex, open_for_writing, write_shard
from rae.experiments.base import RunContext, seed_everything
from rae.experiments.latent_stats import LatentStats
from rae.run_dir import RunFolderBusy, choose_run_folder, start_run_folder
from rae.runner import main
from rae.tracking.aim_tracker import AimTracker
from rae.tracking.tracker import Tracker
from rae.train.checkpoint import Checkpointer, CheckpointsUnreadable
from rae.train.rng import rng_state
from rae.train.session import TrainingSession

ROOT = Path(__file__).resolve().parent.parent
EMBEDDED_STATS = ["--gin", str(ROOT / "experiments" / "latent_stats_embedded.gin"),
                  "--gin_param", "embedded.size = 16", "--gin_param", "embedded.resolution = 28",
                  "--gin_param", "dinov2.input_size = 28", "--gin_param", "latent_stats.batch_size = 8"]


def tiny_cache(folder: Path, channels: int = 4, items: int = 16) -> Path:
    """A finished latent cache of random (channels, 4, 4) latents, made without any encoder."""
    identity = {"autoencoder": "none", "encoder": "none", "encoder_weights": "none", "stats": "none",
                "resolution": 64}
    index = open_for_writing(folder, CacheIndex(identity, [channels, 4, 4], "float32", items, 10, items, False))
    write_shard(folder, 0, torch.randn(items, channels, 4, 4), torch.arange(items) % 10)
    return Path(folder)


def light_stage2_gin(tmp_path: Path, cache: Path) -> Path:
    """experiments/stage2_tiny.gin on a latent cache and without an autoencoder: builds in a blink."""
    path = tmp_path / "light.gin"
    path.write_text(f"include '{ROOT / 'experiments' / 'stage2_tiny.gin'}'\n"
                    "stage2.dataset = None\nstage2.autoencoder = None\nstage2.latents = @dataset.latent_cache()\n"
                    f"latent_cache.path = '{cache}'\nditdh.in_channels = 4\n")
    return path


# ---- 1: unreadable checkpoints -------------------------------------------------------------------
def test_all_checkpoints_unreadable_refuses_naming_each_file_and_changes_nothing(tmp_path):
    ck = Checkpointer(tmp_path, keep=3)
    for step in (1, 2):
        ck.save({"step": step, "w": torch.ones(100)}, step)
    ck.path(1).write_bytes(ck.path(1).read_bytes()[:50])  # truncated
    ck.path(2).write_bytes(b"")  # empty
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(CheckpointsUnreadable) as info:
        ck.load_latest()
    message = str(info.value)
    assert "ckpt-000000001.pt" in message and "truncated" in message
    assert "ckpt-000000002.pt: the file is empty" in message
    assert "Refusing to start" in message
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_save_sets_aside_a_checkpoint_that_did_not_load_instead_of_writing_over_it(tmp_path):
    ck = Checkpointer(tmp_path, keep=3)
    ck.save({"step": 1}, 1)
    ck.path(2).write_bytes(b"damaged")
    assert ck.load_latest() == {"step": 1}
    ck.save({"step": 2}, 2)
    assert ck.load_latest() == {"step": 2}
    assert (tmp_path / "ckpt-000000002.pt.unreadable").read_bytes() == b"damaged"


@pytest.mark.slow
def test_killed_run_whose_checkpoints_are_all_truncated_refuses_to_restart_and_keeps_them(tmp_path, capsys):
    gin_file = light_stage2_gin(tmp_path, tiny_cache(tmp_path / "cache"))
    args = ["--gin", str(gin_file), "--gin_param", f"run.run_root = '{tmp_path / 'runs'}'",
            "--gin_param", "stage2.total_steps = 100000", "--gin_param", "optim.checkpoint_every = 1",
            "--gin_param", "stage2.log_every = 1", "--gin_param", "stage2.keep_checkpoints = 3"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "tools" / "run.py"), *args], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    checkpoints: list[Path] = []
    while len(checkpoints) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        checkpoints = sorted((tmp_path / "runs").glob("light/*/checkpoints/ckpt-*.pt"))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(checkpoints) >= 3, "the run wrote no checkpoints"
    checkpoints = sorted(checkpoints[0].parent.glob("ckpt-*.pt"))
    for path in checkpoints:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    # a save the kill cut short leaves a hidden temporary file, which a restart may clear: not a checkpoint
    kept = lambda: {p: (p.read_bytes(), p.stat().st_mtime_ns)  # noqa: E731
                    for p in checkpoints[0].parent.iterdir() if not p.name.startswith(".")}
    before = kept()

    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Refusing to start" in err
    for path in checkpoints:
        assert path.name in err
    assert kept() == before


# ---- 2: the averaging window ---------------------------------------------------------------------
class Recorder(Tracker):
    def __init__(self) -> None:
        self.values: list[tuple[str, int, float]] = []

    def track(self, name, value, step, context=None):
        self.values.append((name, step, value))


def _logged_losses(run_dir: Path, stop_after: int | None = None) -> list[tuple[str, int, float]]:
    """A session logging every 4 steps and checkpointing every 3; the metric draws from the global RNG."""
    torch.manual_seed(0)
    ctx = RunContext(Accelerator(torch.device("cpu")), Recorder(), run_dir, log=logging.getLogger("test"))
    session = TrainingSession(ctx, {}, total_steps=10, log_every=4, checkpoint_every=3)
    session.resume()
    while not session.done:
        session.end_step({"loss": torch.rand(())}, images=2)
        if session.step == stop_after:
            break
    return [v for v in ctx.tracker.values if v[0] == "loss"]


def test_resumed_run_logs_exactly_the_uninterrupted_curve_when_log_every_is_not_a_multiple(tmp_path):
    full = _logged_losses(tmp_path / "a")
    first = _logged_losses(tmp_path / "b", stop_after=7)  # last checkpoint at 6, mid-window (log at 4, 8)
    rest = _logged_losses(tmp_path / "b")
    assert [step for _, step, _ in full] == [4, 8, 10]
    assert [v for v in first if v[1] <= 6] + rest == full


# ---- 10: Python's random is seeded ---------------------------------------------------------------
def test_identical_seeds_give_identical_python_rng_states():
    random.seed(12345)
    seed_everything(3)
    first = rng_state()["python"]
    random.seed(999)  # whatever ran before must not matter
    seed_everything(3)
    assert rng_state()["python"] == first
    seed_everything(4)
    assert rng_state()["python"] != first


# ---- 9 and Ctrl-C: SIGTERM and SIGINT stop the run cleanly --------------------------------------
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_ctrl_c_mark_the_run_interrupted_and_say_rerunning_resumes(tmp_path, capsys, monkeypatch,
                                                                               request, signum, code):
    def interrupted_run(self, ctx):
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler raises long before this ends
        raise AssertionError("the signal did not stop the run")

    monkeypatch.setattr(LatentStats, "run", interrupted_run)
    handler = signal.getsignal(signal.SIGTERM)
    request.addfinalizer(partial(signal.signal, signal.SIGINT, signal.getsignal(signal.SIGINT)))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a handler left by someone else must not swallow Ctrl-C
    assert main([*EMBEDDED_STATS, "--gin_param", f"run.run_root = '{tmp_path / 'runs'}'"]) == code
    err = capsys.readouterr().err
    assert "rerun the same command to resume" in err and signal.Signals(signum).name in err
    assert "Traceback" not in err
    run = next(r.run for r in Repo(str(tmp_path / "runs")).query_runs("", report_mode=0).iter_runs())
    assert run["status"] == "interrupted"
    assert signal.getsignal(signal.SIGTERM) == handler  # the runner restores the handlers it replaced
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN


# ---- 7: one process per run folder ---------------------------------------------------------------
def test_two_starts_of_one_command_never_share_a_folder(tmp_path):
    root, config = str(tmp_path / "runs"), "a = 1\n"
    first_choice = choose_run_folder(root, "x", config)
    second_choice = choose_run_folder(root, "x", config)  # chosen in the same second, before either made it
    assert first_choice.path == second_choice.path
    made = []
    first = start_run_folder(first_choice, root, "x", config, under_lock=lambda: made.append("repo"))
    try:
        with pytest.raises(RunFolderBusy, match=f"in use by process {os.getpid()}"):
            start_run_folder(second_choice, root, "x", config)
        own = start_run_folder(choose_run_folder(root, "x", config, new=True), root, "x", config, new=True)
        assert own.path != first.path and not own.resumed
        own.unlock()
    finally:
        first.unlock()
    assert made == ["repo"]
    again = start_run_folder(choose_run_folder(root, "x", config), root, "x", config)  # released: resumable
    assert again.path == own.path and again.resumed
    again.unlock()


def test_runner_refuses_a_run_folder_held_by_another_process(tmp_path, capsys):
    args = [*EMBEDDED_STATS, "--gin_param", f"run.run_root = '{tmp_path / 'runs'}'", "--dry_run"]
    assert main(args) == 0  # parse once to learn the config text the folder will hold
    capsys.readouterr()
    import gin

    folder = start_run_folder(choose_run_folder(str(tmp_path / "runs"), "latent_stats_embedded", gin.config_str()),
                              str(tmp_path / "runs"), "latent_stats_embedded", gin.config_str())
    try:
        assert main(args[:-1]) == 2
    finally:
        folder.unlock()
    err = capsys.readouterr().err
    assert f"in use by process {os.getpid()}" in err and "--new_run" in err and "Traceback" not in err


# ---- tools/compare.py on a run that is still active ---------------------------------------------
def test_compare_lists_a_run_that_is_still_being_written(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from compare import main as compare_main
    finally:
        sys.path.remove(str(ROOT / "tools"))
    tracker = AimTracker(repo=str(tmp_path), experiment="x", name="active")
    try:
        tracker.track("loss", 1.0, 1)
        assert compare_main(["--repo", str(tmp_path)]) == 0
    finally:
        tracker.close()
    out = capsys.readouterr().out
    assert "active" in out and "running" in out
