"""Pretrained weights are loaded apart from construction, so architectures build offline;
and the reading of weight files, with a full report of mismatched keys.

A module that holds pretrained parts implements `Pretrained.load_pretrained`; the
runner calls it for every such module before an experiment runs, never in a dry run.
"""
from __future__ import annotations

import abc
import contextlib
import logging
import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
from safetensors.torch import load_file
from torch import nn

from rae.io import UnreadableFile, load, unreadable_reason

# Training checkpoints wrap the weights; the EMA copy is the one meant for use.
WRAPPERS = ("ema", "model")


class WeightsNotFound(FileNotFoundError):
    """Pretrained weights could not be found; the message says what was tried and how to supply them."""


class Pretrained(abc.ABC):
    """Mixin for modules whose weights come from elsewhere (hub id, local folder, file)."""

    weights_loaded: bool = False

    @abc.abstractmethod
    def load_pretrained(self, allow_random: bool, log: logging.Logger) -> None:
        """Load weights in place; without any, raise `WeightsNotFound` unless ``allow_random``."""


def load_pretrained_weights(model: nn.Module, allow_random: bool, log: logging.Logger) -> None:
    """Call ``load_pretrained`` once on every `Pretrained` submodule of ``model``."""
    for module in model.modules():
        if isinstance(module, Pretrained) and not module.weights_loaded:
            module.load_pretrained(allow_random=allow_random, log=log)
            module.weights_loaded = True


# Folders a pipeline's stages will write but have not yet: folder -> stage name (set by the pipeline).
_unwritten: ContextVar[Mapping[str, str]] = ContextVar("rae_unwritten_stage_folders", default={})


@contextlib.contextmanager
def unwritten_folders(folders: Mapping[str | Path, str]) -> Iterator[None]:
    """While inside, a missing file in one of ``folders`` (folder -> the pipeline stage that writes it)
    is reported as not written yet, naming that stage, instead of as absent weights."""
    token = _unwritten.set({os.fspath(folder): stage for folder, stage in folders.items()})
    try:
        yield
    finally:
        _unwritten.reset(token)


def _unwritten_note(tried: str) -> str:
    """Why ``tried`` is missing when a pipeline stage that has not run yet writes it; empty otherwise."""
    for folder, stage in _unwritten.get().items():
        if os.path.join(folder, "") in tried:
            return (f" (not written yet: pipeline stage '{stage}' writes it, after this read; this stage's config "
                    "binds that path, e.g. through an unscoped binding it inherits)")
    return ""


def missing_weights(what: str, tried: str, how: str, allow_random: bool, log: logging.Logger) -> None:
    """The one policy for absent weights: refuse, or with explicit permission warn loudly. A file that a
    later pipeline stage writes is named as such (`unwritten_folders`)."""
    note = _unwritten_note(tried)
    if not allow_random:
        raise WeightsNotFound(
            f"no pretrained weights for {what}: tried {tried}{note}. {how} "
            "(or set `run.allow_random_weights = True` to run with random weights, for tests only)"
        )
    log.warning("RANDOM WEIGHTS for %s: tried %s%s; allowed by run.allow_random_weights", what, tried, note)


def load_state_dict_file(module: nn.Module, weights: str | None, what: str, binding: str, how: str,
                         allow_random: bool, log: logging.Logger) -> None:
    """``module``'s weights from the state dict file ``weights`` (a path or hf:// id), bound as ``binding``;
    absent, the `missing_weights` policy with ``how`` as the way to make the file."""
    from rae.hub import resolve  # rae.hub raises this module's WeightsNotFound

    path = None if weights is None else resolve(weights, what)
    if path is None or not path.is_file():
        missing_weights(what, f"{binding}={weights!r}", how, allow_random, log)
        return
    load_checked(module, read_state_dict(path), what, path)
    log.info("%s: loaded %s", what, path)


class UnusableWeights(UnreadableFile):
    """A weights or stats file that reads but does not fit (keys, shapes): the message names it and what was expected."""


class StateDictMismatch(RuntimeError):
    """A checkpoint does not fit a module: lists every missing and unexpected key."""


def load_file_named(path: str | Path, expected: str, safe_globals: Sequence[Any] = ()) -> Any:
    """A ``.safetensors`` file, or a ``torch.save`` file loaded weights-only (plus ``safe_globals``); a file
    that does not load raises `UnreadableFile` naming it and ``expected``."""
    path = Path(path)
    if path.suffix != ".safetensors":
        with torch.serialization.safe_globals(list(safe_globals)):
            return load(path, what=expected)
    try:
        return load_file(str(path), device="cpu")
    except FileNotFoundError:
        raise
    except Exception as exc:  # safetensors raises its own SafetensorError, or OSError
        raise UnreadableFile(f"{path}: cannot read it as {expected} (a safetensors file of tensors): "
                             f"{unreadable_reason(path, exc)}") from exc


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or ``torch.save`` file (weights only), opening {"ema"|"model": ...}."""
    path = Path(path)
    state = load_file_named(path, "a state dict (a torch.save file of name -> tensor)")
    if isinstance(state, dict):
        wrapper = next((k for k in WRAPPERS if isinstance(state.get(k), dict)), None)
        state = state[wrapper] if wrapper else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UnusableWeights(
            f"{path}: expected a state dict (name -> tensor), optionally under 'ema' or 'model'; "
            f"got {type(state).__name__} with keys {list(state)[:5] if isinstance(state, dict) else []}"
        )
    return state


def first_existing(candidates: Iterable[str | Path | None]) -> Path | None:
    """The first candidate path that is an existing file."""
    for candidate in candidates:
        if candidate is not None and Path(candidate).is_file():
            return Path(candidate)
    return None


def load_checked(module: nn.Module, state: dict[str, torch.Tensor], what: str, source: str | Path) -> None:
    """Copy ``state`` into ``module``; any missing or unexpected key (or shape) raises with the full lists."""
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise StateDictMismatch(f"{what} from {source}: {exc}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise StateDictMismatch(
            f"{what} from {source} does not match the model: "
            f"missing keys {result.missing_keys}; unexpected keys {result.unexpected_keys}"
        )
