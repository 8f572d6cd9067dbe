"""Atomic checkpoints: pruning, skipping unreadable files, surviving a kill mid-write."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from rae.io import atomic_save, load
from rae.train.checkpoint import Checkpointer

ROOT = Path(__file__).resolve().parent.parent


def test_save_load_and_prune(tmp_path):
    ck = Checkpointer(tmp_path / "ckpt", keep=2, keep_every=10)
    for step in (5, 10, 15, 20):
        ck.save({"step": step, "w": torch.full((3,), float(step))}, step)
    assert ck.steps() == [10, 15, 20]  # 5 pruned, 10 kept as a multiple of keep_every
    latest = ck.load_latest()
    assert latest["step"] == 20 and torch.equal(latest["w"], torch.full((3,), 20.0))


def test_unreadable_latest_falls_back_without_deleting(tmp_path):
    ck = Checkpointer(tmp_path, keep=3)
    ck.save({"step": 1}, 1)
    ck.path(2).write_bytes(b"not a checkpoint")
    assert ck.load_latest() == {"step": 1}
    assert ck.path(2).exists()


def test_atomic_save_leaves_no_temporary_file(tmp_path):
    atomic_save({"a": torch.ones(2)}, tmp_path / "x.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]
    assert torch.equal(load(tmp_path / "x.pt")["a"], torch.ones(2))


def test_kill_during_checkpoint_write_keeps_previous_checkpoint(tmp_path):
    folder = tmp_path / "ckpt"
    Checkpointer(folder).save({"step": 1, "w": torch.ones(4)}, 1)
    writer = (
        "import sys, torch\n"
        "from rae.train.checkpoint import Checkpointer\n"
        "big = {'step': 2, 'w': torch.randn(32, 1024, 1024)}\n"  # 128 MB: slow enough to interrupt
        "print('writing', flush=True)\n"
        f"Checkpointer({str(folder)!r}).save(big, 2)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", writer], cwd=ROOT, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == b"writing"
    deadline = time.time() + 60
    while not list(folder.glob(".ckpt-*.tmp-*")) and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ck = Checkpointer(folder)
    assert ck.steps() == [1]
    assert ck.load_latest()["step"] == 1
    assert not list(folder.glob(".ckpt-*.tmp-*"))  # the stale temporary file is cleaned up
