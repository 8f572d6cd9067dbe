"""REPA's target encoders by its own names (``--enc-type``), built as its ``load_encoders`` builds them.

``--enc-type`` is a comma-separated list of ``<family>-vit-<size>`` (e.g. ``dinov2-vit-b,clip-vit-L``);
each name becomes one frozen `Encoder` with REPA's token choice, input size and pixel
normalisation (its ``utils.load_encoders`` and ``train.py`` ``preprocess_raw_image``). At 512 px
REPA runs DINOv2 at 448 px and refuses every other target; so does `repa_encoders`.
"""
from __future__ import annotations

from typing import Any, Sequence

from rae.encoders.base import Encoder
from rae.registry import ENCODERS

_DINOV2 = dict(final_norm_affine=True, resample_positions=True)  # torch hub dinov2 + timm resampling
_DINOV2_SIZES = {"s": "small", "b": "base", "l": "large", "g": "giant"}

# REPA name -> (registered encoder, its arguments; input_size is added by `repa_encoders`).
REPA_TARGETS: dict[str, tuple[str, dict[str, Any]]] = {
    **{f"dinov2-vit-{k}": ("dinov2", dict(variant=v, registers=False, **_DINOV2)) for k, v in _DINOV2_SIZES.items()},
    **{f"dinov2reg-vit-{k}": ("dinov2", dict(variant=v, registers=True, **_DINOV2)) for k, v in _DINOV2_SIZES.items()},
    "dinov1-vit-b": ("dinov1", dict(variant="base", final_norm_affine=True, resample_positions=True)),
    "mocov3-vit-b": ("mocov3", dict(variant="base")),
    "mocov3-vit-l": ("mocov3", dict(variant="large")),
    "clip-vit-L": ("clip", dict(variant="large")),
    "jepa-vit-h": ("ijepa", dict(variant="huge", final_norm_affine=True)),
    "mae-vit-l": ("mae", dict(variant="large", skip_final_norm=True, resample_positions=True)),
}
# Pixels each family is fed at 256-px images (REPA's ``preprocess_raw_image``).
_INPUT_AT_256 = {"dinov2": 224, "dinov1": 256, "mocov3": 256, "clip": 224, "ijepa": 224, "mae": 256}


def repa_encoders(enc_type: str, resolution: int = 256) -> list[Encoder]:
    """One encoder per name of REPA's ``--enc-type`` list, for ``resolution``-px training images."""
    if resolution not in (256, 512):
        raise ValueError(f"REPA trains on 256- or 512-px images, got resolution {resolution}")
    encoders = []
    for name in (n.strip() for n in enc_type.split(",")):
        if name not in REPA_TARGETS:
            raise ValueError(f"unknown REPA target encoder '{name}' in '{enc_type}' "
                             f"(expected a comma-separated list of {', '.join(REPA_TARGETS)})")
        family, kwargs = REPA_TARGETS[name]
        if resolution == 512 and family != "dinov2":
            raise ValueError(f"REPA supports 512-px images with DINOv2 targets only, got '{name}'")
        input_size = _INPUT_AT_256[family] * resolution // 256
        encoders.append(ENCODERS.get(family)(input_size=input_size, **kwargs))
    return encoders


def target_encoders(encoders: Encoder | Sequence[Encoder] | str, resolution: int = 256) -> list[Encoder]:
    """REPA's targets as a list: an encoder, a list of them, or an ``--enc-type`` string for `repa_encoders`."""
    if isinstance(encoders, str):
        return repa_encoders(encoders, resolution)
    if resolution != 256:
        raise ValueError(f"repa.resolution = {resolution} applies only to an --enc-type string; with encoder "
                         "objects, set each encoder's input_size instead")
    encoders = [encoders] if isinstance(encoders, Encoder) else list(encoders)
    wrong = [type(e).__name__ for e in encoders if not isinstance(e, Encoder)]
    if not encoders or wrong:
        raise TypeError(
            f"repa.encoders must be one or more rae Encoders (e.g. @encoder.dinov2()) or REPA's --enc-type "
            f"string (e.g. 'dinov2-vit-b,clip-vit-L'), got {wrong or 'none'}"
        )
    return encoders
