"""Run folders ``<root>/<name>/<timestamp>/``: config, checkpoints, samples of one run.

Running the same command again resumes the newest unfinished folder of that name whose
config is identical; a changed config, or ``--new_run``, starts a fresh folder. Nothing
already written in an existing folder is overwritten on start.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

CONFIG_FILE = "config.gin"
DONE_FILE = "DONE"
TRACKER_FILE = "tracker_run_hash"


@dataclass
class RunFolder:
    path: Path
    run_name: str
    resumed: bool

    def write_text(self, name: str, text: str) -> Path:
        """Write a small text file atomically (temporary file, then rename)."""
        target = self.path / name
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, target)
        return target

    def tracker_hash(self) -> str | None:
        """The tracker run this folder logged to before, so a resumed run continues it."""
        f = self.path / TRACKER_FILE
        return f.read_text().strip() if f.exists() else None

    def remember_tracker(self, tracker: object) -> None:
        run_hash = getattr(tracker, "hash", None)
        if run_hash:
            self.write_text(TRACKER_FILE, run_hash)

    def mark_done(self) -> None:
        self.write_text(DONE_FILE, time.strftime("%Y-%m-%d %H:%M:%S"))


def choose_run_folder(root: str, name: str, config_text: str, new: bool = False) -> RunFolder:
    """The folder to run in, not yet created: the newest unfinished one with this exact config, or a new one."""
    base = Path(root) / name
    if not new and base.is_dir():
        for candidate in sorted((p for p in base.iterdir() if p.is_dir()), reverse=True):
            config = candidate / CONFIG_FILE
            if config.exists() and not (candidate / DONE_FILE).exists() and config.read_text() == config_text:
                return RunFolder(candidate, f"{name}/{candidate.name}", resumed=True)
            break
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = base / stamp
    suffix = 1
    while path.exists():
        path = base / f"{stamp}-{suffix}"
        suffix += 1
    return RunFolder(path, f"{name}/{path.name}", resumed=False)


def create_run_folder(folder: RunFolder, config_text: str) -> RunFolder:
    """Make a new folder and write its config; a resumed folder is left as it is."""
    if not folder.resumed:
        folder.path.mkdir(parents=True)
        folder.write_text(CONFIG_FILE, config_text)
    return folder


def open_run_folder(root: str, name: str, config_text: str, new: bool = False) -> RunFolder:
    """`choose_run_folder`, then `create_run_folder`."""
    return create_run_folder(choose_run_folder(root, name, config_text, new), config_text)
