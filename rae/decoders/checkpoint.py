"""Every file that holds a trained RAE decoder, reduced to the decoder's state dict.

- a decoder state dict: RAE's released ``model.pt`` or our stage 1's ``decoder_ema.pt``,
  optionally under ``ema`` / ``model``;
- RAE's stage-1 training checkpoint ``ep-*.pt`` (``train_stage1.py``): ``model`` and ``ema`` hold
  the whole autoencoder (``encoder.*`` and ``decoder.*``, possibly behind DDP's ``module.`` or
  compile's ``_orig_mod.``); the decoder is what ``extract_decoder.py`` cuts out of it;
- our stage 1's training checkpoint (``checkpoints/step-*.pt``): ``state.ema`` (``model.*``) or
  ``state.decoder``.
The EMA copy is taken where there is one, as the release's decoders were. Keys outside the
decoder other than the frozen encoder's are refused by name.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rae.weights import UnusableWeights, load_file_named

WRAPPER_PREFIXES = ("module.", "_orig_mod.")
"""Prefixes DDP and torch.compile put in front of every key; stripped, as ``extract_decoder.py`` does."""


def read_decoder_state(path: str | Path, prefer: str = "ema") -> dict[str, torch.Tensor]:
    """The decoder's tensors in ``path``, whichever of the layouts above it has."""
    if prefer not in ("ema", "model"):
        raise ValueError(f"prefer must be 'ema' or 'model', got {prefer!r}")
    checkpoint = load_file_named(path, "a decoder checkpoint")
    state = _select(checkpoint, prefer, path)
    state = {_strip_wrappers(k): v for k, v in state.items()}
    if any(k.startswith("decoder.") for k in state):
        foreign = sorted(k for k in state if not k.startswith(("decoder.", "encoder.")))
        if foreign:
            raise UnusableWeights(f"{path}: an autoencoder checkpoint with keys that are neither the encoder's nor "
                                  f"the decoder's: {foreign[:10]}")
        state = {k[len("decoder."):]: v for k, v in state.items() if k.startswith("decoder.")}
    return state


def _select(checkpoint: Any, prefer: str, path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict inside ``checkpoint``: a wrapper's (``ema`` first) or the checkpoint itself."""
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state"), dict):  # our training checkpoints
        inner = checkpoint["state"]
        if prefer == "ema" and isinstance(inner.get("ema"), dict):
            return {k[len("model."):]: v for k, v in inner["ema"].items() if k.startswith("model.")}
        checkpoint = {"model": inner.get("decoder")}
    if isinstance(checkpoint, dict):
        order = (prefer, "model" if prefer == "ema" else "ema")
        wrapper = next((k for k in order if isinstance(checkpoint.get(k), dict)), None)
        checkpoint = checkpoint[wrapper] if wrapper else checkpoint
    if not isinstance(checkpoint, dict) or not checkpoint or \
            not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        keys = list(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise UnusableWeights(
            f"{path}: expected a decoder state dict, a training checkpoint with 'ema' / 'model' entries "
            f"(RAE's ep-*.pt) or one of our stage-1 checkpoints; found {keys}"
        )
    return checkpoint


def _strip_wrappers(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key
