"""REPA's text-to-image MMDiT checkpoints (``train_t2i.py`` saves, ``generate_t2i.py`` samples).

The checkpoint layout and the key names are those of REPA's ImageNet runs, and ours are the
same (``joint_blocks.i.{context_block,x_block}.*``, ``projectors.i.*``), so
`rae.repa.checkpoint.load_repa_checkpoint` loads them; only the constructor differs. Note that
REPA's ``generate_t2i.py`` samples with the ``model`` weights, not the ``ema`` ones: pass
``prefer="model"`` to reproduce it.
"""
from __future__ import annotations

from typing import Any, Mapping

from rae.backbones.mmdit import MMDiT
from rae.repa.projector import Projectors

# REPA's ``MMDiT`` constructor defaults (models/mmdit.py), for keys a config omits. attn_mode, dtype,
# device, num_patches, context_embedder_config and pos_embed_max_size are accepted and change nothing
# (REPA's constructor overwrites the last three: Linear(768, width), a 16 x 16 table, the grid's count).
_REFERENCE_DEFAULTS: dict[str, Any] = dict(
    input_size=32, patch_size=2, in_channels=4, depth=24, mlp_ratio=4.0, qkv_bias=True, encoder_depth=8,
    z_dims=[768], projector_dim=2048, attn_mode="torch", dtype=None, device=None, num_patches=None,
    context_embedder_config=None, pos_embed_max_size=None, learn_sigma=False, adm_in_channels=None,
    register_length=0, rmsnorm=False, scale_mod_only=False, swiglu=False, out_channels=None,
    pos_embed_scaling_factor=None, pos_embed_offset=None, qk_norm=None,
)
# Options of REPA's class that its text-to-image scripts never set; not implemented here.
_UNSUPPORTED = ("learn_sigma", "adm_in_channels", "register_length", "rmsnorm", "scale_mod_only", "swiglu",
                "out_channels", "pos_embed_scaling_factor", "pos_embed_offset", "qk_norm")
REPA_GRID = 16  # REPA's hard-coded pos_embed_max_size: its MMDiT runs on a 16 x 16 token grid only


def from_repa_mmdit_config(config: Mapping[str, Any]) -> tuple[MMDiT, Projectors, int]:
    """(our MMDiT, its projector heads, encoder_depth) from the kwargs of REPA's ``MMDiT`` class."""
    unknown = sorted(set(config) - set(_REFERENCE_DEFAULTS))
    if unknown:
        raise ValueError(
            f"REPA MMDiT config has unknown keys {unknown}; accepted keys: {', '.join(_REFERENCE_DEFAULTS)}"
        )
    cfg = {**_REFERENCE_DEFAULTS, **config}
    changed = [f"{k}={cfg[k]!r}" for k in _UNSUPPORTED if cfg[k] != _REFERENCE_DEFAULTS[k]]
    if changed:
        raise ValueError(f"REPA MMDiT options {', '.join(changed)} are not implemented here "
                         "(REPA's text-to-image scripts never set them)")
    if cfg["input_size"] // cfg["patch_size"] != REPA_GRID:
        raise ValueError(f"REPA's MMDiT runs only on a {REPA_GRID} x {REPA_GRID} token grid (its pos_embed_max_size "
                         f"is hard-coded), got input_size {cfg['input_size']} / patch_size {cfg['patch_size']}")
    backbone = MMDiT(
        cfg["depth"], input_size=cfg["input_size"], patch_size=cfg["patch_size"], in_channels=cfg["in_channels"],
        mlp_ratio=cfg["mlp_ratio"], qkv_bias=cfg["qkv_bias"],
    )
    projectors = Projectors(backbone.hidden_size, cfg["projector_dim"], cfg["z_dims"])
    return backbone, projectors, cfg["encoder_depth"]
