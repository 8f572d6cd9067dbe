"""Atomic, resumable checkpoints: a crash mid-write never leaves a broken latest checkpoint.

Each save is an atomic write (`rae.io.atomic_save`: temporary file, fsync, rename). Files load with ``weights_only=True``; a file that does not load is reported
with its name and the reason, and a run whose checkpoints all fail to load refuses to start
rather than start afresh over them.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

from rae.io import UnreadableFile, atomic_save, unreadable_reason

log = logging.getLogger(__name__)
_NAME = re.compile(r"^ckpt-(\d+)\.pt$")


class CheckpointsUnreadable(UnreadableFile):
    """Every checkpoint of a run folder failed to load: resuming is impossible, starting afresh would overwrite them."""


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
        """Write ``ckpt-<step>.pt``; a file already there is one that did not load on resume, so it is
        renamed aside (``.unreadable``), never written over."""
        if self.path(step).exists():
            aside = self._set_aside(self.path(step))
            log.warning("checkpoint %s did not load on resume; kept as %s", self.path(step), aside)
        path = atomic_save(state, self.path(step))
        self._prune()
        return path

    def _prune(self) -> None:
        steps = self.steps()
        for step in steps[: -self.keep]:
            if self.keep_every and step % self.keep_every == 0:
                continue
            self.path(step).unlink(missing_ok=True)

    def _set_aside(self, path: Path) -> Path:
        aside, n = path.with_name(path.name + ".unreadable"), 1
        while aside.exists():
            aside, n = path.with_name(f"{path.name}.unreadable-{n}"), n + 1
        os.replace(path, aside)
        return aside

    def load_latest(self, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        """The newest checkpoint that loads, or None when there is none.

        An unreadable one is reported and skipped, never deleted (a later save at its step sets it
        aside). When every checkpoint fails, `CheckpointsUnreadable` names each file and why.
        """
        failures = []
        for step in reversed(self.steps()):
            path = self.path(step)
            try:
                return torch.load(path, map_location=map_location, weights_only=True)
            except Exception as exc:  # a file damaged outside our control (disk, copy, a full disk)
                failures.append(f"{path.name}: {unreadable_reason(path, exc)}")
                log.warning("checkpoint %s cannot be read (%s); trying the previous one", path, failures[-1])
        if failures:
            raise CheckpointsUnreadable(
                f"none of the {len(failures)} checkpoints in {self.folder} can be read ({'; '.join(failures)}). "
                "Refusing to start: starting afresh would write over them. Restore them, or move them out of "
                "the folder to start this run from step 0 (or pass --new_run to start a new run folder)"
            )
        return None
