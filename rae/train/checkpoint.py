"""Atomic, resumable checkpoints: a crash mid-write never leaves a broken latest checkpoint.

Each save goes to a temporary file in the same folder, is flushed and fsynced, then renamed
over its final name (rename is atomic on POSIX); the folder is fsynced so the rename survives
a power loss. Files load with ``weights_only=True``; a file that does not load is reported
with its name and the reason, and a run whose checkpoints all fail to load refuses to start
rather than start afresh over them.
"""
from __future__ import annotations

import logging
import os
import re
import zipfile
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


class UnreadableFile(ValueError):
    """A file that exists but does not read as what it should be; the message names it and what was expected."""


class CheckpointsUnreadable(UnreadableFile):
    """Every checkpoint of a run folder failed to load: resuming is impossible, starting afresh would overwrite them."""


def unreadable_reason(path: str | Path, exc: BaseException) -> str:
    """Why a file did not load, in words (torch and pickle report truncation as bare EOFError or zip errors)."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        return "the file is empty"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if isinstance(exc, EOFError):
        return "the file ends early (truncated)"
    if "zip archive" in text:
        return f"it is not a whole torch.save zip archive: truncated or damaged ({text.split('. ')[0]})"
    if "Weights only load failed" in text:
        detail = next((line[line.index("Unsupported"):] for line in lines if "Unsupported" in line), "")
        return f"it is not a torch.save file of tensors and plain containers; weights-only loading refused: {detail}"
    if not zipfile.is_zipfile(path):  # neither torch's zip format nor a readable legacy pickle
        return f"it is not a torch.save file ({type(exc).__name__}: {text})"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load(path: str | Path, map_location: str | torch.device = "cpu", what: str = "a torch.save checkpoint",
         mmap: bool = False) -> Any:
    """Load a ``torch.save`` file safely (tensors and plain containers only); a file that does not
    load raises `UnreadableFile` naming it, what was expected and why it failed."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise
    except Exception as exc:  # torch.load raises EOFError, RuntimeError, KeyError, UnpicklingError, ...
        raise UnreadableFile(f"{path}: cannot read it as {what}: {unreadable_reason(path, exc)}") from exc


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
