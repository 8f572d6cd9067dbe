"""Run folders ``<root>/<name>/<timestamp>/``: config, checkpoints, samples of one run.

Running the same command again resumes the newest folder of that name when it is unfinished
and its config is identical; when a folder with the identical config has finished, the command
does nothing and names it (a finished run is never silently redone); a changed config, or
``--new_run``, starts a fresh folder. Nothing already written in an existing folder is
overwritten on start. A process holds a lock on its
folder while it runs: a second process never runs in it (it is told which process holds it),
and folders are chosen and created under a lock on the run root, so two commands started in
the same second never collide.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from rae.io import atomic_write

CONFIG_FILE = "config.gin"
DONE_FILE = "DONE"
TRACKER_FILE = "tracker_run_hash"
LOCK_FILE = ".lock"
ROOT_LOCK_FILE = ".run_folders.lock"


class RunFolderError(ValueError):
    """A run root or run name that cannot hold a run folder; the message names the path and why."""


class RunFolderBusy(RunFolderError):
    """The run folder is held by another live process."""


@dataclass
class RunFolder:
    path: Path
    run_name: str
    resumed: bool
    finished: str | None = None  # when the folder holds a finished run: the time it finished
    _lock: Any = field(default=None, repr=False, compare=False)

    def lock(self) -> None:
        """Hold this folder for this process (until `unlock` or exit); a folder held by another
        process is refused, naming that process."""
        handle = open(self.path / LOCK_FILE, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunFolderBusy(
                f"run folder {self.path} is in use by {holder}. Wait for it to end (rerunning the command then "
                "resumes the run), or pass --new_run to start a run folder of its own"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()} (since {time.strftime('%Y-%m-%d %H:%M:%S')})")
        handle.flush()
        self._lock = handle

    def __getstate__(self) -> dict[str, Any]:
        """Sent to the other ranks without the lock (a file held by this process only)."""
        return {**self.__dict__, "_lock": None}

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the lock
            self._lock = None

    def write_text(self, name: str, text: str) -> Path:
        """Write a small text file atomically (temporary file, then rename)."""
        return atomic_write(self.path / name, lambda f: f.write(text.encode()))

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


def check_location(root: str, name: str) -> None:
    """Refuse, naming the path and the reason, a run root that cannot hold folders or a run name
    the file system cannot store, before anything is written."""
    base = Path(root).expanduser() / name
    if not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise RunFolderError(f"run.name {name!r}: expected a relative folder name inside run.run_root")
    try:
        existing = next(p for p in (base, *base.parents) if p.exists())
        limit = os.pathconf(existing, "PC_NAME_MAX") if existing.is_dir() else 255
    except OSError as exc:
        raise RunFolderError(f"run.run_root / run.name: cannot use {base} ({exc.strerror or exc})") from exc
    for part in Path(name).parts:
        if len(os.fsencode(part)) > limit:
            raise RunFolderError(f"run.name: the folder name '{part[:40]}...' is {len(os.fsencode(part))} bytes "
                                 f"long; the file system at {existing} allows at most {limit}")
    if not existing.is_dir():
        raise RunFolderError(f"run.run_root {root!r}: cannot make {base}, because {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunFolderError(f"run.run_root {root!r}: cannot make {base}, because {existing} is not writable")


@contextlib.contextmanager
def root_lock(root: str) -> Iterator[None]:
    """Serialise, over every process using the run root, choosing and creating run folders."""
    folder = Path(root).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / ROOT_LOCK_FILE, "a")
    except OSError as exc:
        raise RunFolderError(f"run.run_root: cannot use {folder} ({exc.strerror or exc})") from exc
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def choose_run_folder(root: str, name: str, config_text: str, new: bool = False) -> RunFolder:
    """The folder to run in, not yet created: the newest one when it is unfinished and has this exact
    config (resumed), else the newest finished one with this exact config (``finished`` set: nothing
    to run), else a new one. ``new`` always gives a new one."""
    try:
        return _choose(root, name, config_text, new)
    except OSError as exc:
        raise RunFolderError(f"run.run_root / run.name: cannot use {Path(root) / name} "
                             f"({exc.strerror or exc})") from exc


def _choose(root: str, name: str, config_text: str, new: bool) -> RunFolder:
    base = Path(root).expanduser() / name
    folders = sorted((p for p in base.iterdir() if p.is_dir()), reverse=True) if not new and base.is_dir() else []
    same = [p for p in folders if (p / CONFIG_FILE).exists() and (p / CONFIG_FILE).read_text() == config_text]
    if same and same[0] == folders[0] and not (same[0] / DONE_FILE).exists():
        return RunFolder(same[0], f"{name}/{same[0].name}", resumed=True)
    done = next((p for p in same if (p / DONE_FILE).exists()), None)
    if done is not None:
        return RunFolder(done, f"{name}/{done.name}", resumed=False, finished=(done / DONE_FILE).read_text().strip())
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = base / stamp
    suffix = 1
    while path.exists():
        path = base / f"{stamp}-{suffix}"
        suffix += 1
    return RunFolder(path, f"{name}/{path.name}", resumed=False)


def create_run_folder(folder: RunFolder, config_text: str) -> RunFolder:
    """Make a new folder and write its config; a resumed or finished folder is left as it is."""
    if not folder.resumed and folder.finished is None:
        try:
            folder.path.mkdir(parents=True)
            folder.write_text(CONFIG_FILE, config_text)
        except OSError as exc:
            raise RunFolderError(f"cannot make the run folder {folder.path} ({exc.strerror or exc}); "
                                 "set run.run_root to a writable folder and run.name to a short name") from exc
    return folder


def start_run_folder(folder: RunFolder, root: str, name: str, config_text: str, new: bool = False,
                     under_lock: Callable[[], None] | None = None) -> RunFolder:
    """Create (or reopen) the chosen folder and lock it for this process; returns the folder used.

    Under the run root's lock: ``under_lock`` runs first (e.g. creating the Aim repo there), and a
    new folder that another process made since it was chosen is chosen again (which finds that
    process's folder, held, when the config is the same, or a fresh one with ``new``). A finished
    folder is returned as it is, neither created nor locked.
    """
    with root_lock(root):
        if under_lock is not None:
            under_lock()
        if not folder.resumed and folder.finished is None and folder.path.exists():
            folder = choose_run_folder(root, name, config_text, new)
        if folder.finished is not None:  # finished by another process since it was chosen: nothing to run
            return folder
        create_run_folder(folder, config_text)
        folder.lock()
    return folder


def open_run_folder(root: str, name: str, config_text: str, new: bool = False) -> RunFolder:
    """`choose_run_folder`, then `create_run_folder`."""
    return create_run_folder(choose_run_folder(root, name, config_text, new), config_text)
