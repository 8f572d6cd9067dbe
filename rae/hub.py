"""Files named by a Hugging Face hub path, ``hf://ORG/REPO/path/in/repo[@revision]``.

Every weights, stats, decoder and checkpoint path of the project also takes this form (e.g.
``hf://nyu-visionx/RAE-collections/stats/dinov2/wReg_base/imagenet1k/stat.pt``). A file is
downloaded once through ``huggingface_hub`` into its normal cache and read from the cache
afterwards, without asking the network again; offline with an empty cache the run refuses to
start, naming the file and the ``hf download`` command that fetches it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rae.weights import WeightsNotFound

PREFIX = "hf://"
OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


class HubFileUnavailable(WeightsNotFound):
    """A hub file is neither in the local cache nor downloadable now."""


@dataclass(frozen=True)
class HubFile:
    """One file of a hub model repository at a revision (a branch, tag or commit hash)."""

    repo_id: str
    filename: str
    revision: str = "main"

    @property
    def download_command(self) -> str:
        """The command line that puts this file into the cache."""
        revision = "" if self.revision == "main" else f" --revision {self.revision}"
        return f"hf download {self.repo_id} {self.filename}{revision}"


def is_hub_path(path: str | os.PathLike | None) -> bool:
    """Whether ``path`` is an ``hf://`` path (a `RunFile` or a local path is not)."""
    return isinstance(path, str) and path.startswith(PREFIX)


def parse(path: str) -> HubFile:
    """``hf://ORG/REPO/path/in/repo[@revision]`` -> `HubFile`; anything else is a ValueError naming the form."""
    body = path[len(PREFIX):] if path.startswith(PREFIX) else ""
    body, _, revision = body.partition("@")
    parts = body.split("/")
    if len(parts) < 3 or not all(parts) or (path.count("@") and not revision):
        raise ValueError(f"{path!r} is not a hub path: expected hf://ORG/REPO/path/in/repo[@revision]")
    return HubFile(f"{parts[0]}/{parts[1]}", "/".join(parts[2:]), revision or "main")


def cache_dir() -> Path:
    """The hub cache as ``huggingface_hub`` finds it (HF_HUB_CACHE, else HF_HOME/hub), read at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "huggingface"
    return Path(home).expanduser() / "hub"


def offline() -> bool:
    """Whether the environment asks the Hugging Face libraries to stay off the network (read at call time)."""
    return any(os.environ.get(k, "").strip().lower() in {"1", "true", "yes", "on"} for k in OFFLINE_VARS)


def resolve(path: str | os.PathLike, what: str = "a file") -> Path:
    """A local path for ``path``: hub paths come from the cache, downloaded first if absent and online."""
    if not is_hub_path(path):
        return Path(path)
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    hub_file = parse(str(path))
    cache = cache_dir()
    cached = try_to_load_from_cache(hub_file.repo_id, hub_file.filename, cache_dir=cache, revision=hub_file.revision)
    if isinstance(cached, str):
        return Path(cached)
    if offline():
        reason = f"it is not in the hub cache {cache} and HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set"
    else:
        try:
            return Path(hf_hub_download(hub_file.repo_id, hub_file.filename, revision=hub_file.revision,
                                        cache_dir=cache))
        except Exception as exc:  # network, authentication or missing file: all end in the same advice
            reason = f"the download failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    raise HubFileUnavailable(
        f"{what} {path} is unavailable: {reason}. Fetch it once with `{hub_file.download_command}` "
        f"(it lands in {cache}, where later runs read it offline), or pass a local path instead."
    )
