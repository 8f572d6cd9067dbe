"""Atomic, resumable checkpoints: a crash mid-write never leaves a broken latest checkpoint.

Each save goes to a temporary file in the same folder, is flushed and fsynced, then renamed
over its final name (rename is atomic on POSIX); the folder is fsynced so the rename survives
a power loss. Files load with ``weights_only=True``.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

log = logging.getLogger(__name__)
_NAME = re.compile(r"^ckpt-(\d+)\.pt$")


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically (temporary file, fsync, rename, fsync folder)."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any]) -> Path:
    """Write ``path`` through ``write(file)`` atomically: a crash leaves the old file or the new one, whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint safely (tensors and plain containers only)."""
    return torch.load(path, map_location=map_location, weights_only=True)


class Checkpointer:
    """``ckpt-<step>.pt`` files in one folder; keeps the newest ``keep`` (and every ``keep_every``-th step)."""

    def __init__(self, folder: str | Path, keep: int = 2, keep_every: int | None = None) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.folder = Path(folder)
        self.keep = keep
        self.keep_every = keep_every
        for stale in self.folder.glob(".ckpt-*.pt.tmp-*") if self.folder.is_dir() else ():
            stale.unlink(missing_ok=True)  # left by a writer that was killed mid-save

    def steps(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        found = (_NAME.match(p.name) for p in self.folder.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def path(self, step: int) -> Path:
        return self.folder / f"ckpt-{step:09d}.pt"

    def save(self, state: dict[str, Any], step: int) -> Path:
        path = atomic_save(state, self.path(step))
        self._prune()
        return path

    def _prune(self) -> None:
        steps = self.steps()
        for step in steps[: -self.keep]:
            if self.keep_every and step % self.keep_every == 0:
                continue
            self.path(step).unlink(missing_ok=True)

    def load_latest(self, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        """The newest checkpoint that loads; an unreadable one is reported and skipped, never deleted."""
        for step in reversed(self.steps()):
            try:
                return load(self.path(step), map_location)
            except Exception as exc:  # a file damaged outside our control (disk, copy)
                log.warning("checkpoint %s cannot be read (%s); trying the previous one", self.path(step), exc)
        return None
