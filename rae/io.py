"""Safe file writes and reads shared by every layer: atomic writes (a crash leaves the old file or
the new one, whole) and weights-only ``torch.load`` whose failures name the file and the reason.

Each write goes to a temporary file in the same folder, is flushed and fsynced, then renamed over
its final name (rename is atomic on POSIX); the folder is fsynced so the rename survives a power loss.
"""
from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically (temporary file, fsync, rename, fsync folder)."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """``obj`` as indented JSON to ``path`` atomically (metrics, manifests: never half-written)."""
    return atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))


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
