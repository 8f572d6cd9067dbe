"""Encoders built on transformers models: architecture from a config now, weights later.

Architectures come from ``configs/<hub name>.json``, shipped with the package: each holds the
released checkpoint's hub id, its published ``config.json`` (``model``; for SigLIP2 and CLIP
the vision tower's part) and its image processor's ``image_mean`` / ``image_std`` (for REPA's
targets, the normalisation REPA applies; `fixed_normalisation`). When ``weights`` is a
local ``save_pretrained`` folder, that folder's own config.json defines the architecture
instead. Either way construction never touches the network; ``load_pretrained`` does.
(``mocov3_vit*.json`` hold timm ``VisionTransformer`` arguments instead: MoCo v3 has no hub id.)
"""
from __future__ import annotations

import abc
import contextlib
import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from rae.encoders.base import Encoder
from rae.hub import offline
from rae.weights import missing_weights

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
PUBLISHED = "published"
"""The default ``weights``: the released checkpoint of the chosen variant, by its hub id."""
T = TypeVar("T")



@dataclass(frozen=True)
class Architecture:
    """A transformers config (as a dict), the pixel normalisation its weights expect, and its file."""

    config: dict[str, Any]
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    origin: str


def shipped_architecture(hub_id: str) -> Architecture:
    """The shipped architecture of a released checkpoint, e.g. ``facebook/dinov2-base``."""
    path = CONFIG_DIR / f"{hub_id.split('/')[-1]}.json"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
        raise ValueError(f"no shipped architecture for {hub_id} (expected {path}; shipped: {', '.join(known)})")
    spec = json.loads(path.read_text())
    return Architecture(spec["model"], tuple(spec["image_mean"]), tuple(spec["image_std"]), str(path))


def folder_architecture(folder: Path, fallback: Architecture) -> Architecture:
    """A save_pretrained folder's config.json, and its preprocessor's mean/std when it has one."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ValueError(f"encoder weights folder {folder} has no config.json; expected a transformers "
                         "save_pretrained folder (config.json + model.safetensors)")
    config = json.loads(config_path.read_text())
    mean, std = fallback.image_mean, fallback.image_std
    processor_path = folder / "preprocessor_config.json"
    if processor_path.is_file():
        processor = json.loads(processor_path.read_text())
        mean = tuple(processor.get("image_mean", mean))
        std = tuple(processor.get("image_std", std))
    return Architecture(config, mean, std, str(config_path))


def looks_local(weights: str) -> bool:
    """A filesystem path rather than a hub id (``org/name``): it exists or cannot be an id."""
    return (Path(weights).expanduser().exists() or os.path.isabs(weights) or "\\" in weights
            or weights.startswith((".", "~")) or weights.count("/") > 1)


def read_hub_or_folder(read: Callable[[str], T], source: str | None, what: str, how: str, allow_random: bool,
                       log: logging.Logger) -> T | None:
    """``read(name)`` of the hub id or local folder ``source``; None, after `missing_weights`, when there is no
    source, the folder does not exist or reading fails (``read`` passes ``local_files_only=offline()``)."""
    if source is None or (looks_local(source) and not Path(source).expanduser().is_dir()):
        missing_weights(what, f"{source!r} (no such folder)" if source else "no source (weights=None)", how,
                        allow_random, log)
        return None
    try:
        return read(str(Path(source).expanduser()) if looks_local(source) else source)
    except OSError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        missing_weights(what, f"{source} ({reason})", how, allow_random, log)
        return None


def copy_weights(module: nn.Module, state: dict[str, torch.Tensor], source: str, what: str) -> None:
    """Copy a read state dict into ``module``, every key; a mismatch is a ValueError naming ``what`` and the source."""
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"weights from {source} do not fit {what}: {exc}") from None


def resolve(weights: str | None, hub_id: str) -> tuple[str | None, Architecture]:
    """``weights`` with `PUBLISHED` replaced by ``hub_id``, and the architecture it implies."""
    weights = hub_id if weights == PUBLISHED else weights
    shipped = shipped_architecture(hub_id)
    if weights is not None and Path(weights).expanduser().is_dir():
        return weights, folder_architecture(Path(weights).expanduser(), shipped)
    return weights, shipped


def fixed_normalisation(arch: Architecture, shipped: Architecture) -> Architecture:
    """``arch`` with the shipped pixel mean/std, whatever a local folder's preprocessor says.

    For encoders whose normalisation is a fact of the method that uses them (REPA's
    ``preprocess_raw_image``), not of the checkpoint's image processor.
    """
    return replace(arch, image_mean=shipped.image_mean, image_std=shipped.image_std)


def fixed_normalisation_architecture(weights: str | None, hub_id: str,
                                     model_type: str) -> tuple[str | None, Architecture]:
    """`resolve` for a one-tower encoder of ``model_type`` whose pixel normalisation is the shipped one
    (`fixed_normalisation`): the weights' source and the architecture."""
    weights, arch = resolve(weights, hub_id)
    check_model_type(arch, model_type)
    return weights, fixed_normalisation(arch, shipped_architecture(hub_id))


def vision_part(arch: Architecture, full_type: str, tower_type: str, hint: str = "") -> Architecture:
    """The vision tower's config of a two-tower model: a full config.json keeps it in ``vision_config``."""
    if arch.config.get("model_type") == full_type:
        return replace(arch, config=arch.config["vision_config"])
    check_model_type(arch, tower_type, f" (or a full '{full_type}' config{hint})")
    return arch


def check_variant(family: str, variant: str, variants: tuple[str, ...]) -> None:
    """Refuse a size that has no shipped architecture, listing the ones that do."""
    if variant not in variants:
        raise ValueError(f"{family}: unknown variant '{variant}' (expected one of {', '.join(variants)})")


def check_model_type(arch: Architecture, expected: str, hint: str = "") -> None:
    """Refuse a config of another model family, naming the file and what was expected."""
    found = arch.config.get("model_type")
    if found != expected:
        raise ValueError(f"{arch.origin} describes a '{found}' model, expected '{expected}'{hint}")


class _DropLoadReport(logging.Filter):
    """Passes every log record except transformers' table of unused checkpoint keys."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


@contextlib.contextmanager
def _quiet_load_report() -> Iterator[None]:
    """Drop that table (SigLIP's text tower, MAE's decoder) while loading: `adopt` checks keys itself.

    A filter, not a logger level: transformers runs extra checks when that logger's level is raised.
    """
    report_log = logging.getLogger("transformers.modeling_utils")
    drop = _DropLoadReport()
    report_log.addFilter(drop)
    try:
        yield
    finally:
        report_log.removeFilter(drop)


class TransformersEncoder(Encoder):
    """An `Encoder` around a transformers vision model; subclasses say how to run it (`hidden`).

    Arguments every subclass takes: ``variant`` (the size, picking a shipped architecture),
    ``input_size`` (pixels fed to the model, a multiple of the patch size), ``weights`` (a hub
    id; a local save_pretrained folder, whose config.json then defines the architecture; None
    for random weights, which the runner allows only with ``allow_random_weights``; default
    `PUBLISHED`, the variant's released id) and ``final_norm_affine``.

    Tokens are ``hidden(pixels)[:, num_prefix_tokens:]``: the final hidden states after the
    model's final layer norm (the module named ``final_norm``), which RAE uses without its
    affine (``final_norm_affine=False``, the norm is replaced by a parameter-free one);
    ``skip_final_norm=True`` replaces it by the identity instead (REPA's MAE target takes the
    last block's output). Parameters named in ``dropped`` (and the removed norm's) are
    expected in released checkpoints and ignored when loading.

    Position embeddings for an ``input_size`` other than the checkpoint's: by default the
    model interpolates its table at every forward (transformers' bicubic, as RAE runs it).
    ``resample_positions=True`` builds the model for ``input_size`` and resamples the
    checkpoint's table once, when loading, with ``timm.layers.resample_abs_pos_embed``
    (bicubic, antialiased): what REPA's ``load_encoders`` does to DINOv2, MAE and DINO.
    """

    position_table = "embeddings.position_embeddings"

    def __init__(self, model_class: type[PreTrainedModel], config: PretrainedConfig, arch: Architecture, *,
                 name: str, hub_id: str, weights: str | None, input_size: int, num_prefix_tokens: int,
                 final_norm: str, final_norm_affine: bool, dropped: tuple[str, ...] = (),
                 skip_final_norm: bool = False, resample_positions: bool = False,
                 model_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        if input_size <= 0 or input_size % config.patch_size:
            raise ValueError(f"{name}: input_size {input_size} must be a positive multiple of the patch "
                             f"size {config.patch_size} (e.g. {16 * config.patch_size})")
        if skip_final_norm and final_norm_affine:
            raise ValueError(f"{name}: skip_final_norm=True takes the tokens before the final norm, so "
                             "final_norm_affine=True has nothing to apply to; set one of them")
        if resample_positions:
            config.image_size = input_size  # the built table has the input grid; `adopt` resamples into it
        self.name = name
        self.hub_id = hub_id
        self.weights = weights
        self.patch_size = config.patch_size
        self.input_size = input_size
        self.hidden_size = config.hidden_size
        self.pixel_mean = arch.image_mean
        self.pixel_std = arch.image_std
        self.num_prefix_tokens = num_prefix_tokens
        self.dropped = dropped
        self.resample_positions = resample_positions
        self.model = model_class(config, **(model_kwargs or {}))
        if skip_final_norm:
            setattr(self.model, final_norm, nn.Identity())
            self.dropped = (*dropped, f"{final_norm}.")
        elif not final_norm_affine:
            setattr(self.model, final_norm,
                    nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, elementwise_affine=False))
            self.dropped = (*dropped, f"{final_norm}.")
        self.freeze()

    @abc.abstractmethod
    def hidden(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels -> the model's final hidden states, prefix tokens included."""

    def tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.hidden(pixels)[:, self.num_prefix_tokens:]

    def load_pretrained(self, allow_random: bool, log: logging.Logger) -> None:
        """Weights from the hub id or local folder in ``weights``, copied into the built model."""
        what = f"the {self.name} encoder"
        how = (f"Download the released weights on a networked machine with `hf download {self.hub_id}` "
               f"(older huggingface_hub: `huggingface-cli download {self.hub_id}`) and copy the Hugging "
               "Face cache (~/.cache/huggingface, or $HF_HOME) here, or point the encoder's `weights` "
               "at a local save_pretrained folder")
        source = self.weights
        if source is None:
            missing_weights(what, "no source (weights=None)", how, allow_random, log)
            return
        if looks_local(source) and not Path(source).expanduser().is_dir():
            missing_weights(what, f"local folder {source} (it does not exist)", how, allow_random, log)
            return
        try:
            with _quiet_load_report():
                pretrained = type(self.model).from_pretrained(
                    str(Path(source).expanduser()) if looks_local(source) else source,
                    local_files_only=offline())
        except OSError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            missing_weights(what, f"{source} ({reason})", how, allow_random, log)
            return
        self.adopt(pretrained.state_dict(), source)
        log.info("loaded %s weights from %s", self.name, source)

    def adopt(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Copy a released state dict in; anything missing, unexpected or misshapen is an error."""
        if self.resample_positions:
            state = {**state, self.position_table: self.resampled_positions(state, source)}
        try:
            result = self.model.load_state_dict(state, strict=False)
        except RuntimeError as exc:
            raise ValueError(f"weights from {source} do not fit {self.name}: {exc}") from None
        unexpected = [k for k in result.unexpected_keys if not k.startswith(self.dropped)]
        if result.missing_keys or unexpected:
            raise ValueError(f"weights from {source} do not fit {self.name}: missing {result.missing_keys[:5]}, "
                             f"unexpected {unexpected[:5]} (is it a checkpoint of this model family?)")

    def resampled_positions(self, state: dict[str, torch.Tensor], source: str) -> torch.Tensor:
        """The checkpoint's position table resampled to this model's grid, prefix rows kept (as REPA)."""
        ours = self.model.get_parameter(self.position_table)
        prefix = ours.shape[1] - self.token_grid[0] * self.token_grid[1]
        table = state.get(self.position_table)
        if table is None or table.ndim != 3 or table.shape[1] <= prefix:
            raise ValueError(f"weights from {source} have no position table '{self.position_table}' of shape "
                             f"(1, {prefix} + h*w, {self.hidden_size}) for {self.name}")
        resampled = resample_abs_pos_embed(table.float(), list(self.token_grid), num_prefix_tokens=prefix)
        return resampled.to(table.dtype)
