"""Latent caches: a dataset encoded once by an autoencoder, so stage-2 training never runs the encoder.

A cache is a folder:
  ``index.json``      who made the latents (autoencoder, encoder, a fingerprint of the encoder's
                      weights, the image resolution, a fingerprint of the normalisation stats), the
                      latent shape and dtype, the number of items, the shard size, whether
                      horizontally flipped copies are stored, and the shards finished so far;
  ``shard-00000.pt``  ``{"latents": (n, C, h, w), "labels": (n,) int64[, "flipped": (n, C, h, w)]}``
                      for items ``k * shard_size ...``, written atomically.
A shard file that exists is complete, so an interrupted ``cache_latents`` run resumes with the
missing shards only. `LatentCache` reads a finished cache lazily: nothing is opened until the
first use (or ``prepare()``), so experiments that use it build on the meta device with no I/O.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from rae.registry import DATASETS
from rae.io import UnreadableFile, atomic_save, atomic_write_json, load

INDEX_FILE = "index.json"
FORMAT = 1
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
IDENTITY_KEYS = ("autoencoder", "encoder", "encoder_weights", "stats", "resolution")
"""What makes two caches interchangeable; the resolution is that of the images that were encoded."""
_SHARD = re.compile(r"^shard-(\d{5})\.pt$")
_STATS_TENSORS = ("latent_mean", "latent_var")
_STATS_NUMBERS = ("scaling_factor", "latent_bias")


class CacheMismatch(ValueError):
    """A cache made by another encoder, resolution or stats than the one in use."""


# ---------------------------------------------------------------------------------------------
# Identity: which encoding made the latents
# ---------------------------------------------------------------------------------------------
def fingerprint(named: Iterable[tuple[str, torch.Tensor | float]]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes of tensors (numbers as float64), in the order given."""
    digest = hashlib.sha256()
    for name, value in named:
        tensor = value if isinstance(value, torch.Tensor) else torch.tensor(float(value), dtype=torch.float64)
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def describe_encoder(encoder: nn.Module) -> str:
    """A readable name of the encoding network, e.g. ``DINOv2(hub_id=facebook/dinov2-base, input_size=224)``."""
    attrs = [f"{a}={getattr(encoder, a)}" for a in ("hub_id", "input_size", "image_size") if hasattr(encoder, a)]
    return f"{type(encoder).__name__}({', '.join(attrs)})"


def stats_identity(autoencoder: nn.Module) -> str:
    """Fingerprint of what normalises the latents (RAE: mean/var buffers and eps; SD-VAE: scale, bias)."""
    named: list[tuple[str, torch.Tensor | float]] = [
        (n, getattr(autoencoder, n)) for n in _STATS_TENSORS
        if isinstance(getattr(autoencoder, n, None), torch.Tensor)
    ]
    if named and hasattr(autoencoder, "stats_eps"):
        named.append(("stats_eps", autoencoder.stats_eps))
    named += [(n, float(getattr(autoencoder, n))) for n in _STATS_NUMBERS
              if isinstance(getattr(autoencoder, n, None), (int, float))]
    return fingerprint(named) if named else "none (latents are not normalised)"


def autoencoder_identity(autoencoder: nn.Module) -> dict[str, str]:
    """The autoencoder's part of a cache identity; its encoder's weights are fingerprinted, not named."""
    encoder = getattr(autoencoder, "encoder", autoencoder)
    return {
        "autoencoder": type(autoencoder).__name__,
        "encoder": describe_encoder(encoder),
        "encoder_weights": fingerprint(sorted(encoder.state_dict().items())),
        "stats": stats_identity(autoencoder),
    }


def describe_identity(identity: dict[str, Any]) -> str:
    parts = [f"{k} {identity[k]}" for k in IDENTITY_KEYS if k in identity]
    return "; ".join(parts)


def refuse_mismatch(folder: Path, found: dict[str, Any], expected: dict[str, Any], keys: Iterable[str],
                    this: str) -> None:
    """Raise `CacheMismatch` naming both identities when they differ on any of ``keys``."""
    differ = [k for k in keys if found.get(k) != expected.get(k)]
    if differ:
        raise CacheMismatch(
            f"latent cache {folder} was made with [{describe_identity(found)}], but {this} is "
            f"[{describe_identity(expected)}]; they differ in {', '.join(differ)}. "
            "Use the autoencoder and data the cache was made with, or make a new cache in another folder."
        )


# ---------------------------------------------------------------------------------------------
# The index
# ---------------------------------------------------------------------------------------------
@dataclass
class CacheIndex:
    """The contents of ``index.json``."""

    identity: dict[str, Any]
    latent_shape: list[int]
    dtype: str
    num_items: int
    num_classes: int
    shard_size: int
    flip: bool
    shards_done: list[int] = field(default_factory=list)
    format: int = FORMAT

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"latent cache dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.shard_size < 1 or self.num_items < 1:
            raise ValueError(f"latent cache needs shard_size >= 1 and items >= 1, "
                             f"got {self.shard_size}, {self.num_items}")
        self.latent_shape = [int(s) for s in self.latent_shape]

    @property
    def num_shards(self) -> int:
        return -(-self.num_items // self.shard_size)

    @property
    def complete(self) -> bool:
        return len(self.shards_done) == self.num_shards

    def shard_items(self, shard: int) -> range:
        """The dataset indices stored in shard ``shard``."""
        return range(shard * self.shard_size, min((shard + 1) * self.shard_size, self.num_items))

    def layout(self) -> dict[str, Any]:
        """Everything but the progress: what two runs writing into one folder must agree on."""
        return {k: v for k, v in asdict(self).items() if k != "shards_done"}


def shard_path(folder: Path, shard: int) -> Path:
    return folder / f"shard-{shard:05d}.pt"


def read_index(folder: str | Path) -> CacheIndex:
    """The index of a cache folder, or an error that says what the folder lacks."""
    path = Path(folder) / INDEX_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a latent cache: it has no {INDEX_FILE} "
                                "(make one with the cache_latents experiment, "
                                "e.g. experiments/cache_latents_dinov2_b.gin)")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UnreadableFile(f"{path}: cannot read it as a latent cache index (JSON written by cache_latents): "
                             f"{exc}; the file is cut off or damaged: rerun the cache_latents command that "
                             "made the cache") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise UnreadableFile(f"{path}: latent cache format {found!r}, this code reads format {FORMAT}")
    try:
        return CacheIndex(**data)
    except TypeError as exc:  # missing or unknown fields
        raise UnreadableFile(f"{path}: not a latent cache index of format {FORMAT} ({exc})") from exc


def write_index(folder: Path, index: CacheIndex) -> None:
    """Write ``index.json`` atomically (temporary file, fsync, rename)."""
    atomic_write_json(folder / INDEX_FILE, asdict(index))


def finished_shards(folder: Path, num_shards: int) -> list[int]:
    """Shards whose files exist (atomic writes: an existing shard file is a complete one)."""
    found = (_SHARD.match(p.name) for p in folder.iterdir()) if folder.is_dir() else ()
    return sorted(k for k in (int(m.group(1)) for m in found if m) if k < num_shards)


def open_for_writing(folder: str | Path, index: CacheIndex) -> CacheIndex:
    """Create a cache folder, or reopen an unfinished one made the same way; returns the index as on disk.

    A folder made with another identity or layout is refused, naming both. Temporary files of
    writers killed mid-save are removed. Call on one rank only, before any shard is written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / INDEX_FILE).is_file():
        existing = read_index(folder)
        refuse_mismatch(folder, existing.identity, index.identity, IDENTITY_KEYS, "this run's")
        made, asked = existing.layout(), index.layout()
        differ = sorted(k for k in made if made[k] != asked[k])
        if differ:
            raise CacheMismatch(
                f"latent cache {folder} was made with {', '.join(f'{k}={made[k]!r}' for k in differ)}, "
                f"this run asks for {', '.join(f'{k}={asked[k]!r}' for k in differ)}; "
                "rerun with the cache's settings to finish it, or use another folder"
            )
    elif any(_SHARD.match(p.name) for p in folder.iterdir()):
        raise CacheMismatch(f"{folder} holds shard files but no {INDEX_FILE}; it is not a cache this code made. "
                            "Use an empty folder")
    for stale in folder.glob(".shard-*.pt.tmp-*"):
        stale.unlink(missing_ok=True)
    index = replace(index, shards_done=finished_shards(folder, index.num_shards))
    write_index(folder, index)
    return index


def write_shard(folder: Path, shard: int, latents: torch.Tensor, labels: torch.Tensor,
                flipped: torch.Tensor | None = None) -> Path:
    """Save one shard atomically; tensors are copied first (a slice would save its whole storage)."""
    content = {"latents": latents.clone(), "labels": labels.to(torch.int64).clone()}
    if flipped is not None:
        content["flipped"] = flipped.clone()
    return atomic_save(content, shard_path(folder, shard))


# ---------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------
@DATASETS.register("latent_cache")
class LatentCache(torch.utils.data.Dataset):
    """Items ``(latent (C, h, w) in the stored dtype, label)`` of a finished cache folder ``path``.

    ``random_flip``: when the cache holds flipped copies, each access returns the flipped one with
    probability 1/2 (the random horizontal flip of stage-2 training, drawn from the global
    generator, which checkpoints restore). Shards are memory-mapped on first use.
    """

    def __init__(self, path: str, random_flip: bool = True) -> None:
        self.path = Path(path).expanduser()
        self.random_flip = random_flip
        self._index: CacheIndex | None = None
        self._shards: dict[int, dict[str, torch.Tensor]] = {}

    def prepare(self) -> CacheIndex:
        """Read and check the index (once); a missing or unfinished cache is an error that says how to finish it."""
        if self._index is None:
            index = read_index(self.path)
            done = finished_shards(self.path, index.num_shards)
            if len(done) != index.num_shards:
                raise ValueError(
                    f"latent cache {self.path} is unfinished: {len(done)} of {index.num_shards} shards written; "
                    "rerun the cache_latents command that made it to finish it"
                )
            self._index = index
        return self._index

    @property
    def index(self) -> CacheIndex:
        return self.prepare()

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.index.latent_shape)

    @property
    def num_classes(self) -> int:
        return self.index.num_classes

    @property
    def resolution(self) -> int:
        return int(self.index.identity["resolution"])

    def check_autoencoder(self, autoencoder: nn.Module) -> None:
        """Refuse an autoencoder (used to decode samples) that is not the one the cache was made with."""
        keys = [k for k in IDENTITY_KEYS if k != "resolution"]
        refuse_mismatch(self.path, self.index.identity, autoencoder_identity(autoencoder), keys, "the autoencoder")

    def __len__(self) -> int:
        return self.index.num_items

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        index = self.index
        if not 0 <= i < index.num_items:
            raise IndexError(f"latent cache {self.path}: index {i} out of range for {index.num_items} items")
        shard, row = divmod(i, index.shard_size)
        content = self._shard(shard)
        key = "flipped" if index.flip and self.random_flip and torch.randint(2, ()).item() else "latents"
        return content[key][row], int(content["labels"][row])

    def _shard(self, shard: int) -> dict[str, torch.Tensor]:
        if shard not in self._shards:
            path = shard_path(self.path, shard)
            content = load(path, what="a latent cache shard (delete it and rerun cache_latents to rewrite it)",
                           mmap=True)
            expected = (len(self.index.shard_items(shard)), *self.index.latent_shape)
            keys = ("latents", "flipped") if self.index.flip else ("latents",)
            if not isinstance(content, dict) or not all(k in content for k in (*keys, "labels")):
                raise UnreadableFile(f"{path}: expected a latent cache shard holding {', '.join((*keys, 'labels'))}; "
                                     "the shard is damaged: delete it and rerun cache_latents")
            for key in keys:
                if tuple(content[key].shape) != expected:
                    raise UnreadableFile(f"{path}: '{key}' has shape {tuple(content[key].shape)}, the index says "
                                     f"{expected}; the shard is damaged: delete it and rerun cache_latents")
            self._shards[shard] = content
        return self._shards[shard]

    def __getstate__(self) -> dict[str, Any]:
        """DataLoader workers started by spawn get the path and index, never the mapped shards."""
        return {**self.__dict__, "_shards": {}}
