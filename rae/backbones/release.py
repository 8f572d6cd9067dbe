"""Released RAE stage-2 checkpoints load as published: reference constructor kwargs and key names.

``from_reference_config(kind, config)`` builds our model from the kwargs of the reference class
(``DiTwDDTHead`` for "ditdh", ``LightningDiT`` for "lightningdit"); ``load_release_state``
loads a released state dict (or checkpoint file) into it, renaming keys where ours differ.
"""
from __future__ import annotations

import os
import re
from typing import Any, Callable, Mapping

import torch
from torch import nn

from rae.backbones.ditdh import DiTDH
from rae.backbones.lightningdit import LightningDiT
from rae.weights import UnusableWeights, load_file_named

# The reference classes' constructor defaults (RAE's stage2/models), used for keys a config omits.
_REFERENCE_DEFAULTS: dict[str, dict[str, Any]] = {
    "ditdh": dict(
        input_size=1, patch_size=1, in_channels=768, hidden_size=[1152, 2048], depth=[28, 2],
        num_heads=[16, 16], mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000, use_qknorm=False,
        use_swiglu=True, use_rope=True, use_rmsnorm=True, wo_shift=False, use_pos_embed=True,
    ),
    "lightningdit": dict(
        input_size=16, patch_size=1, in_channels=768, hidden_size=1152, depth=28, num_heads=16,
        mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000, learn_sigma=True, use_qknorm=False,
        use_swiglu=True, use_rope=True, use_rmsnorm=True, wo_shift=False, use_gembed=True,
    ),
}
_REFERENCE_CLASSES = {"DiTwDDTHead": "ditdh", "LightningDiT": "lightningdit"}
_SHARED = ("input_size", "in_channels", "mlp_ratio", "class_dropout_prob", "num_classes", "use_qknorm",
           "use_swiglu", "use_rope", "use_rmsnorm", "wo_shift")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers


def _pair(value: int | list[int] | tuple[int, int], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if len(value) != 2:
        raise ValueError(f"reference DiTwDDTHead {name} must be one int or [body, head], got {value!r}")
    return int(value[0]), int(value[1])


def _ditdh_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    body_patch, head_patch = _pair(cfg["patch_size"], "patch_size")
    if body_patch != 1 or head_patch != 1:
        # The reference head embeds C*p*p-channel inputs, so it only runs with patch 1.
        raise ValueError(f"reference DiTwDDTHead runs only with patch_size 1, got {cfg['patch_size']!r}")
    hidden, head_hidden = _pair(cfg["hidden_size"], "hidden_size")
    depth, head_depth = _pair(cfg["depth"], "depth")
    heads, head_heads = _pair(cfg["num_heads"], "num_heads")
    return dict(
        hidden_size=hidden, depth=depth, num_heads=heads, head_hidden_size=head_hidden,
        head_depth=head_depth, head_num_heads=head_heads, patch_size=1,
        use_pos_embed=cfg["use_pos_embed"], **{k: cfg[k] for k in _SHARED},
    )


def _lightningdit_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    # ``use_gembed`` is accepted and ignored: the reference never reads it (always Fourier features).
    return dict(
        hidden_size=cfg["hidden_size"], depth=cfg["depth"], num_heads=cfg["num_heads"],
        patch_size=cfg["patch_size"], learn_sigma=cfg["learn_sigma"], use_pos_embed=True,
        **{k: cfg[k] for k in _SHARED},
    )


_BUILDERS: dict[str, tuple[type[nn.Module], Callable[[dict[str, Any]], dict[str, Any]]]] = {
    "ditdh": (DiTDH, _ditdh_kwargs),
    "lightningdit": (LightningDiT, _lightningdit_kwargs),
}


def from_reference_config(kind: str, config: Mapping[str, Any]) -> nn.Module:
    """Our backbone built from a reference class's constructor kwargs (as in RAE's released configs).

    ``kind``: "ditdh" / "lightningdit" (or the reference class names "DiTwDDTHead" / "LightningDiT").
    """
    kind = _REFERENCE_CLASSES.get(kind, kind)
    if kind not in _BUILDERS:
        raise ValueError(f"unknown released backbone {kind!r}; expected one of {', '.join(_BUILDERS)}")
    defaults = _REFERENCE_DEFAULTS[kind]
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        raise ValueError(
            f"reference {kind} config has unknown keys {unknown}; accepted keys: {', '.join(defaults)}"
        )
    cls, translate = _BUILDERS[kind]
    return cls(**translate({**defaults, **config}))


def _ditdh_key(model: DiTDH, key: str) -> str:
    """Reference ``blocks.i`` is our ``body.i`` (i < depth) or ``head.(i - depth)``; RoPE tables renamed."""
    match = re.match(r"blocks\.(\d+)\.(.*)", key)
    if match:
        index, rest = int(match.group(1)), match.group(2)
        depth = len(model.body)
        return f"body.{index}.{rest}" if index < depth else f"head.{index - depth}.{rest}"
    return re.sub(r"^enc_feat_rope\.", "body_rope.", re.sub(r"^dec_feat_rope\.", "head_rope.", key))


def _lightningdit_key(model: LightningDiT, key: str) -> str:
    return re.sub(r"^feat_rope\.", "rope.", key)


_KEY_MAPS: dict[type, Callable[[Any, str], str]] = {DiTDH: _ditdh_key, LightningDiT: _lightningdit_key}


def select_weights(checkpoint: Mapping[str, Any], prefer: str = "ema") -> Mapping[str, Any]:
    """The state dict in a checkpoint: its ``prefer`` entry ("ema" or "model"), else the other, else itself."""
    if prefer not in ("ema", "model"):
        raise ValueError(f"prefer must be 'ema' or 'model', got {prefer!r}")
    for name in (prefer, "model" if prefer == "ema" else "ema"):
        if isinstance(checkpoint.get(name), Mapping):
            return checkpoint[name]
    return checkpoint


def _strip_wrappers(key: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def _check_derived(model: nn.Module, derived: dict[str, torch.Tensor]) -> None:
    """Released copies of tables we derive from the config (RoPE) must equal ours: same grid, same heads."""
    ours = dict(model.named_buffers())
    for key, value in derived.items():
        if ours[key].shape != value.shape or not torch.allclose(ours[key].cpu().float(), value.float(), atol=1e-5):
            raise ValueError(
                f"released {key} {tuple(value.shape)} differs from the table this config derives "
                f"{tuple(ours[key].shape)}: input_size, patch_size or head width do not match"
            )


def _listing(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def load_release_state(
    model: nn.Module, state_or_path: Mapping[str, Any] | str | os.PathLike, prefer: str = "ema",
    source: str | os.PathLike | None = None,
) -> nn.Module:
    """Load a released (or our own) state dict into ``model``, in place; returns ``model``.

    Accepts a raw state dict, a checkpoint dict with ``ema`` / ``model`` entries (``prefer``
    picks), or a path to either. Raises listing missing, unexpected and mis-shaped keys, and
    the file (``source``, or the path given) they came from.
    """
    path_given = isinstance(state_or_path, (str, os.PathLike))
    source = f" from {os.fspath(state_or_path if path_given else source)}" if path_given or source else ""
    if path_given:
        state_or_path = load_file_named(state_or_path, "a checkpoint (state dict, or a dict with 'ema' / 'model')")
    rename = _KEY_MAPS.get(type(model), lambda _model, key: key)
    state = {rename(model, _strip_wrappers(k)): v for k, v in select_weights(state_or_path, prefer).items()}

    expected = model.state_dict()
    buffers = dict(model.named_buffers())
    derived = {k: v for k, v in state.items() if k in buffers and k not in expected}
    _check_derived(model, derived)
    state = {k: v for k, v in state.items() if k not in derived}

    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = sorted(
        f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in set(state) & set(expected) if state[k].shape != expected[k].shape
    )
    if missing or unexpected or mis_shaped:
        problems = [f"{label}: {_listing(keys)}" for label, keys in
                    (("missing", missing), ("unexpected", unexpected), ("wrong shape", mis_shaped)) if keys]
        raise UnusableWeights(f"state dict{source} does not fit {type(model).__name__}; " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    return model
