"""The params a tracker run carries: the whole config as a nested dict, commit, versions, device."""
from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import gin

from rae.accelerator import Accelerator

PACKAGES = ("torch", "torchvision", "timm", "transformers", "gin-config", "torchdiffeq", "lpips", "aim")


def config_dict() -> dict[str, dict[str, Any]]:
    """Gin's bindings as {"scope/configurable": {"param": value}}, values as plain data."""
    nested: dict[str, dict[str, Any]] = {}
    for (scope, selector), params in gin.config._CONFIG.items():  # gin exposes no public view
        key = f"{scope}/{selector}" if scope else selector
        name = selector.rpartition(".")[2]
        nested.setdefault(key or name, {}).update({p: _plain(v) for p, v in params.items()})
    return nested


def _plain(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def run_params(accelerator: Accelerator) -> dict[str, Any]:
    return {
        "config": config_dict(),
        "git_commit": git_commit(),
        "versions": versions(),
        "accelerator": accelerator.describe(),
    }
