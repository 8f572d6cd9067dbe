"""Paths inside the current run folder, for configs whose stages read what earlier stages wrote.

A config cannot know its run folder (``runs/<name>/<timestamp>/``) when it is written, so
``rae.stats_path = @stats/run_file()`` with ``stats/run_file.relative = "latent_stats/stat.pt"``
names the file relative to the folder, and the runner sets the folder before the run starts.
"""
from __future__ import annotations

import os
from pathlib import Path

_root: Path | None = None


def set_run_root(folder: str | Path | None) -> None:
    """Called by the runner with the run folder (None when the run ends)."""
    global _root
    _root = Path(folder) if folder is not None else None


class RunFile(os.PathLike):
    """``relative`` inside the run folder; usable wherever a path is (``Path(f)``, ``open(f)``)."""

    def __init__(self, relative: str) -> None:
        if Path(relative).is_absolute() or ".." in Path(relative).parts:
            raise ValueError(f"run_file.relative must be a path inside the run folder, got {relative!r}")
        self.relative = relative

    def __fspath__(self) -> str:
        if _root is None:
            raise RuntimeError(f"run_file {self.relative!r} is resolved only while a run is executing "
                               "(the runner sets the run folder)")
        return str(_root / self.relative)

    def __str__(self) -> str:
        return os.fspath(self) if _root is not None else f"<run folder>/{self.relative}"

    def __repr__(self) -> str:
        return f"RunFile({self.relative!r})"
