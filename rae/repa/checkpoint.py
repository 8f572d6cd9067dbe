"""REPA's released checkpoints (``SiT-XL-2-256x256.pt``, or its own ``train.py`` saves) as published.

The file is a dict with ``ema`` (the weights REPA samples with), and from training also
``model``, ``opt``, ``args`` (an ``argparse.Namespace``) and ``steps``. Its state dicts hold
the SiT keys and the projector heads (``projectors.i.{0,2,4}.*``) side by side; here the
backbone gets the former and the alignment loss's `Projectors` the latter.
"""
from __future__ import annotations

import argparse
import os
import re
from typing import Any, Mapping

import torch

from rae.backbones.base import Backbone
from rae.backbones.release import load_release_state, select_weights
from rae.backbones.sit import SiT
from rae.repa.projector import Projectors
from rae.weights import load_file_named

PROJECTOR_PREFIX = "projectors."
# REPA's ``SiT`` constructor defaults (models/sit.py), for keys a config omits.
_REFERENCE_DEFAULTS: dict[str, Any] = dict(
    path_type="edm", input_size=32, patch_size=2, in_channels=4, hidden_size=1152, decoder_hidden_size=768,
    encoder_depth=8, depth=28, num_heads=16, mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000,
    use_cfg=False, z_dims=[768], projector_dim=2048, qk_norm=False, fused_attn=True,
)
_LEGACY_BLOCK = re.compile(r"^decoder_blocks\.(\d+)\.(.*)$")


def from_repa_config(config: Mapping[str, Any]) -> tuple[SiT, Projectors, int]:
    """(our SiT, its projector heads, encoder_depth) from the kwargs of REPA's ``SiT`` class.

    ``path_type``, ``use_cfg`` and ``fused_attn`` change nothing in REPA's network (the null-label
    row exists whenever ``class_dropout_prob > 0``; attention is always SDPA here) and are accepted.
    """
    unknown = sorted(set(config) - set(_REFERENCE_DEFAULTS))
    if unknown:
        raise ValueError(
            f"REPA SiT config has unknown keys {unknown}; accepted keys: {', '.join(_REFERENCE_DEFAULTS)}"
        )
    cfg = {**_REFERENCE_DEFAULTS, **config}
    if cfg["decoder_hidden_size"] != cfg["hidden_size"]:
        # REPA's final layer is built with decoder_hidden_size but fed hidden_size tokens: it only runs when equal.
        raise ValueError(f"REPA SiT runs only with decoder_hidden_size == hidden_size, got "
                         f"{cfg['decoder_hidden_size']} and {cfg['hidden_size']}")
    backbone = SiT(
        hidden_size=cfg["hidden_size"], depth=cfg["depth"], num_heads=cfg["num_heads"], patch_size=cfg["patch_size"],
        input_size=cfg["input_size"], in_channels=cfg["in_channels"], num_classes=cfg["num_classes"],
        class_dropout_prob=cfg["class_dropout_prob"], mlp_ratio=cfg["mlp_ratio"], qk_norm=cfg["qk_norm"],
    )
    projectors = Projectors(cfg["hidden_size"], cfg["projector_dim"], cfg["z_dims"])
    return backbone, projectors, cfg["encoder_depth"]


def read_repa_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a REPA checkpoint with ``weights_only=True``; ``argparse.Namespace`` (its ``args``) is allowed."""
    return load_file_named(path, "a checkpoint (state dict, or REPA's dict with 'ema' / 'model')",
                           safe_globals=[argparse.Namespace])


def rename_legacy_keys(state: Mapping[str, torch.Tensor], encoder_depth: int) -> dict[str, torch.Tensor]:
    """Early REPA checkpoints call block ``encoder_depth + i`` ``decoder_blocks.i``: rename it ``blocks.(depth + i)``."""
    renamed = {}
    for key, value in state.items():
        match = _LEGACY_BLOCK.match(key)
        renamed[f"blocks.{int(match.group(1)) + encoder_depth}.{match.group(2)}" if match else key] = value
    return renamed


def split_projectors(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(backbone keys, projector keys without the ``projectors.`` prefix)."""
    backbone = {k: v for k, v in state.items() if not k.startswith(PROJECTOR_PREFIX)}
    projectors = {k[len(PROJECTOR_PREFIX):]: v for k, v in state.items() if k.startswith(PROJECTOR_PREFIX)}
    return backbone, projectors


def load_repa_checkpoint(
    backbone: Backbone,
    checkpoint: Mapping[str, Any] | str | os.PathLike,
    projectors: Projectors | None = None,
    prefer: str = "ema",
    encoder_depth: int | None = None,
) -> list[str]:
    """Load a REPA checkpoint (path, checkpoint dict or state dict) into ``backbone`` and ``projectors``.

    Any missing, unexpected or mis-shaped key is an error that lists them. Without
    ``projectors`` the checkpoint's projector keys are skipped; their names are returned
    so the caller can report them. ``encoder_depth`` renames legacy ``decoder_blocks`` keys.
    """
    source = checkpoint if isinstance(checkpoint, (str, os.PathLike)) else None
    if source is not None:
        checkpoint = read_repa_checkpoint(source)
    state = dict(select_weights(checkpoint, prefer))
    if encoder_depth is not None:
        state = rename_legacy_keys(state, encoder_depth)
    backbone_state, projector_state = split_projectors(state)
    load_release_state(backbone, backbone_state, source=source)
    if projectors is None:
        return sorted(PROJECTOR_PREFIX + k for k in projector_state)
    load_release_state(projectors, projector_state, source=source)
    return []
