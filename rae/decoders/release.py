"""Key names of RAE's released decoders (``model.pt``, HF ViT-MAE layout) -> ours.

The release keeps separate query/key/value projections; ours is one fused ``qkv`` (q, k, v stacked).
Keys that match no rule are passed on unchanged, so that loading reports them as unexpected.
"""
from __future__ import annotations

import re

import torch

_RENAMES = [
    (re.compile(r"^decoder_embed\."), "embed."),
    (re.compile(r"^decoder_pos_embed$"), "pos_embed"),
    (re.compile(r"^trainable_cls_token$"), "cls_token"),
    (re.compile(r"^decoder_layers\.(\d+)\.layernorm_before\."), r"blocks.\1.norm1."),
    (re.compile(r"^decoder_layers\.(\d+)\.attention\.output\.dense\."), r"blocks.\1.attn.proj."),
    (re.compile(r"^decoder_layers\.(\d+)\.layernorm_after\."), r"blocks.\1.norm2."),
    (re.compile(r"^decoder_layers\.(\d+)\.intermediate\.dense\."), r"blocks.\1.mlp.fc1."),
    (re.compile(r"^decoder_layers\.(\d+)\.output\.dense\."), r"blocks.\1.mlp.fc2."),
    (re.compile(r"^decoder_norm\."), "norm."),
    (re.compile(r"^decoder_pred\."), "head."),
]
_QKV = re.compile(r"^decoder_layers\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$")


def is_release_state_dict(state: dict[str, torch.Tensor]) -> bool:
    """True for the release's layout (its embedding is called ``decoder_embed``)."""
    return any(key.startswith("decoder_embed.") for key in state)


def convert_release_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the release's keys to ours and fuse q/k/v; incomplete q/k/v triples stay as they were."""
    out: dict[str, torch.Tensor] = {}
    triples: dict[tuple[str, str], dict[str, tuple[str, torch.Tensor]]] = {}
    for key, value in state.items():
        qkv = _QKV.match(key)
        if qkv:
            layer, part, kind = qkv.groups()
            triples.setdefault((layer, kind), {})[part] = (key, value)
            continue
        out[_rename(key)] = value
    for (layer, kind), parts in triples.items():
        if set(parts) == {"query", "key", "value"}:
            out[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts[p][1] for p in ("query", "key", "value")])
        else:
            out.update(parts.values())
    return out


def _rename(key: str) -> str:
    for pattern, replacement in _RENAMES:
        new, count = pattern.subn(replacement, key, count=1)
        if count:
            return new
    return key
