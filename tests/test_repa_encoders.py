"""REPA's target encoders: REPA's tokens, resolution and normalisation for each, and several targets at once.

Every encoder runs on a tiny checkpoint written here (save_pretrained folders; MoCo v3 as an
RCG-layout ``.pth``), against the raw model it wraps, run the way REPA runs it.
"""
from __future__ import annotations

import json
import logging
import shutil
from functools import partial
from pathlib import Path

import gin
import pytest
import torch
from conftest import HALF, IMAGENET_MEAN, IMAGENET_STD, save_tiny
from test_latent_cache import Recorder, build, run_experiment
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.nn import functional as F
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Model,
    IJepaConfig,
    IJepaModel,
    ViTConfig,
    ViTMAEModel,
    ViTModel,
)

from rae.encoders.base import Encoder
from rae.encoders.clip import CLIP
from rae.encoders.dinov1 import DINOv1
from rae.encoders.dinov2 import DINOv2
from rae.encoders.hf import CONFIG_DIR
from rae.encoders.ijepa import IJEPA
from rae.encoders.mae import MAE
from rae.encoders.mocov3 import MoCoV3
from rae.registry import ENCODERS
from rae.repa.loss import REPALoss
from rae.repa.targets import REPA_TARGETS, repa_encoders
from rae.weights import WeightsNotFound

ROOT = Path(__file__).resolve().parent.parent
LOG = logging.getLogger("test_repa_encoders")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_channels=3, intermediate_size=64)


def tiny_dino(folder: Path) -> Path:
    """A 2-layer DINO ViTModel (pooler included, as the hub's), patch 8 trained at 24 px (3x3), normalisation 0.5."""
    return save_tiny(ViTModel(ViTConfig(**TINY, patch_size=8, image_size=24)), folder, HALF, HALF)


def tiny_clip(folder: Path) -> Path:
    """A whole tiny CLIP (text + vision, as the released one), vision patch 8 at 32 px, normalisation 0.5."""
    text = CLIPTextConfig(**{k: v for k, v in TINY.items() if k != "num_channels"}, vocab_size=64,
                          max_position_embeddings=16, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    vision = CLIPVisionConfig(**TINY, patch_size=8, image_size=32)
    return save_tiny(CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict())),
                     folder, HALF, HALF)


def tiny_ijepa(folder: Path) -> Path:
    """A 2-layer I-JEPA encoder, patch 8 at 32 px (4x4 tokens, no CLS), with the hub's 0.5 normalisation."""
    return save_tiny(IJepaModel(IJepaConfig(**TINY, patch_size=8, image_size=32)), folder, HALF, HALF)


MOCO_TINY = dict(patch_size=8, embed_dim=32, depth=15, num_heads=2, mlp_ratio=4.0, qkv_bias=True)


def tiny_vit(img_size: int) -> VisionTransformer:
    """A timm ViT as MoCo v3's, 15 blocks (the released names of blocks 13 and 14 are wrong), patch 8."""
    return VisionTransformer(img_size=img_size, num_classes=0, norm_layer=partial(nn.LayerNorm, eps=1e-6),
                             **MOCO_TINY).eval()


def tiny_mocov3_reference() -> VisionTransformer:
    """The tiny MoCo v3 ViT as trained: at 24 px (3x3 table), every parameter perturbed."""
    torch.manual_seed(0)
    model = tiny_vit(24)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def write_rcg_checkpoint(model: VisionTransformer, path: Path) -> Path:
    """``model`` saved as RCG's MoCo v3 .pth: base and momentum encoders, heads, predictor, misnamed keys."""
    misnamed = {"blocks.13.norm1": "blocks.13.norm13", "blocks.13.mlp.fc1": "blocks.13.mlp.fc13",
                "blocks.14.norm2": "blocks.14.norm14", "blocks.14.mlp.fc2": "blocks.14.mlp.fc14"}
    state = {}
    for key, value in model.state_dict().items():
        for right, wrong in misnamed.items():
            key = key.replace(right, wrong)
        state[f"module.base_encoder.{key}"] = value.clone()
        state[f"module.momentum_encoder.{key}"] = torch.zeros_like(value)
    state |= {"module.base_encoder.head.0.weight": torch.randn(16, 32), "module.predictor.0.weight": torch.randn(8, 16)}
    torch.save({"epoch": 300, "arch": "vit_tiny", "state_dict": state}, path)
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("repa_targets")
    folders = {name: make(root / name) for name, make in
               [("dinov1", tiny_dino), ("clip", tiny_clip), ("ijepa", tiny_ijepa)]}
    folders["mocov3"] = write_rcg_checkpoint(tiny_mocov3_reference(), root / "mocov3_vitt.pth")
    return folders


def loaded(encoder: Encoder) -> Encoder:
    encoder.load_pretrained(allow_random=False, log=LOG)
    return encoder


def build_target(name: str, folders: dict[str, Path], mae_dir: Path, dinov2_dir: Path) -> Encoder:
    """Each REPA target on its tiny checkpoint, set up as REPA_TARGETS says, at a size giving 4x4 tokens."""
    family, kwargs = REPA_TARGETS[name]
    weights = {"dinov2": dinov2_dir, "mae": mae_dir}.get(family, folders.get(family))
    size = 56 if family == "dinov2" else 32
    return loaded(ENCODERS.get(family)(**kwargs, input_size=size, weights=str(weights)))


TARGET_NAMES = ["dinov2-vit-b", "dinov1-vit-b", "clip-vit-L", "jepa-vit-h", "mae-vit-l", "mocov3-vit-b"]


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_tokens_are_frozen_deterministic_and_on_the_grid(name, folders, tiny_mae_dir, tiny_dinov2_dir,
                                                         tiny_mocov3_architecture):
    encoder = build_target(name, folders, tiny_mae_dir, tiny_dinov2_dir)
    images = torch.rand(2, 3, 40, 40)
    first, second = encoder(images), encoder(images)
    assert first.shape == (2, 16, 32) and encoder.token_grid == (4, 4)
    assert torch.equal(first, second)
    assert all(not p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not any(m.training for m in encoder.modules())


def with_table(model: nn.Module, table: torch.Tensor) -> nn.Module:
    """``model`` with its position table replaced (REPA resamples the checkpoint's before running)."""
    model.embeddings.position_embeddings = nn.Parameter(table)
    return model


def timm_resampled(table: torch.Tensor, grid: int, prefix: int = 1) -> torch.Tensor:
    """REPA's ``timm.layers.pos_embed.resample_abs_pos_embed(pos_embed, [grid, grid])``."""
    return resample_abs_pos_embed(table, [grid, grid], num_prefix_tokens=prefix)


def test_dinov2_target_is_x_norm_patchtokens_with_repa_position_table(tiny_dinov2_dir):
    """DINOv2 without registers at 28 px (2x2 of a 4x4 table): normed patch tokens, table resampled as timm."""
    pixels = torch.randn(2, 3, 28, 28)
    raw = Dinov2Model.from_pretrained(tiny_dinov2_dir).eval()
    reference = with_table(raw, timm_resampled(raw.embeddings.position_embeddings.detach(), 2))
    repa = loaded(DINOv2(registers=False, input_size=28, weights=str(tiny_dinov2_dir), final_norm_affine=True,
                         resample_positions=True))
    rae_way = loaded(DINOv2(registers=False, input_size=28, weights=str(tiny_dinov2_dir), final_norm_affine=True))
    with torch.no_grad():
        expected = reference(pixel_values=pixels).last_hidden_state[:, 1:]
        ours, interpolated = repa.tokens(pixels), rae_way.tokens(pixels)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(ours, interpolated, atol=1e-3)  # antialiased resampling is not transformers' bicubic


def test_mae_target_takes_the_tokens_before_the_final_layer_norm(tiny_mae_dir):
    """REPA's MAE-L: the last block's patch tokens, raster order; they differ from the post-LayerNorm ones."""
    pixels = torch.randn(2, 3, 32, 32)
    raw = ViTMAEModel.from_pretrained(tiny_mae_dir).eval()
    raw.config.mask_ratio = 0.0
    noise = torch.arange(16.0).expand(2, 16)  # increasing noise: the identity permutation
    with torch.no_grad():
        out = raw(pixel_values=pixels, noise=noise, output_hidden_states=True)
        pre_norm = loaded(MAE(input_size=32, weights=str(tiny_mae_dir), skip_final_norm=True)).tokens(pixels)
        post_norm = loaded(MAE(input_size=32, weights=str(tiny_mae_dir), final_norm_affine=True)).tokens(pixels)
    torch.testing.assert_close(pre_norm, out.hidden_states[-1][:, 1:], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(post_norm, out.last_hidden_state[:, 1:], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(pre_norm, post_norm, atol=1e-2)
    with pytest.raises(ValueError, match="skip_final_norm=True.*final_norm_affine=True"):
        MAE(weights=str(tiny_mae_dir), skip_final_norm=True, final_norm_affine=True)


def test_mae_target_resamples_the_position_table_as_repa(tiny_mae_dir):
    """At 48 px (6x6 from a 4x4 table) the sin-cos table is resampled once, as timm does for REPA."""
    pixels = torch.randn(1, 3, 48, 48)
    raw = ViTMAEModel.from_pretrained(tiny_mae_dir).eval()
    raw.config.mask_ratio = 0.0
    reference = with_table(raw, timm_resampled(raw.embeddings.position_embeddings.detach(), 6))
    encoder = loaded(MAE(input_size=48, weights=str(tiny_mae_dir), skip_final_norm=True, resample_positions=True))
    with torch.no_grad():
        out = reference(pixel_values=pixels, noise=torch.arange(36.0)[None], interpolate_pos_encoding=True,
                        output_hidden_states=True)
        ours = encoder.tokens(pixels)
    torch.testing.assert_close(ours, out.hidden_states[-1][:, 1:], atol=1e-5, rtol=1e-4)


def test_dinov1_target_is_normed_patch_tokens_at_256_style_resampling(folders):
    """DINO at 32 px (4x4 from its 3x3 table): patch tokens after the final norm, table resampled as timm."""
    pixels = torch.randn(2, 3, 32, 32)
    raw = ViTModel.from_pretrained(folders["dinov1"], add_pooling_layer=False).eval()
    reference = with_table(raw, timm_resampled(raw.embeddings.position_embeddings.detach(), 4))
    encoder = loaded(DINOv1(input_size=32, weights=str(folders["dinov1"])))
    with torch.no_grad():
        expected = reference(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state[:, 1:]
        ours = encoder.tokens(pixels)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)
    assert encoder.pixel_mean == IMAGENET_MEAN and encoder.pixel_std == IMAGENET_STD  # REPA's, not the folder's 0.5


def test_clip_target_is_the_last_block_without_ln_post(folders):
    pixels = torch.randn(2, 3, 32, 32)
    raw = CLIPVisionModel.from_pretrained(folders["clip"]).eval()
    encoder = loaded(CLIP(input_size=32, weights=str(folders["clip"])))
    with torch.no_grad():
        out = raw(pixel_values=pixels, output_hidden_states=True)
        ours = encoder.tokens(pixels)
    torch.testing.assert_close(ours, out.hidden_states[-1][:, 1:], atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        ln_post = raw.post_layernorm(out.hidden_states[-1][:, 1:])
    assert not torch.allclose(ours, ln_post, atol=1e-2)
    assert not any("post_layernorm" in name for name, _ in encoder.named_parameters())
    assert encoder.pixel_mean == CLIP_MEAN


def test_ijepa_target_is_every_token_after_the_final_norm(folders):
    pixels = torch.randn(2, 3, 32, 32)
    raw = IJepaModel.from_pretrained(folders["ijepa"]).eval()
    encoder = loaded(IJEPA(input_size=32, weights=str(folders["ijepa"])))
    with torch.no_grad():
        expected, ours = raw(pixel_values=pixels).last_hidden_state, encoder.tokens(pixels)
    assert ours.shape == (2, 16, 32)  # no CLS token to drop
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)
    assert encoder.pixel_mean == IMAGENET_MEAN  # REPA's ImageNet normalisation, not the hub processor's 0.5


@pytest.fixture
def tiny_mocov3_architecture(tmp_path, monkeypatch):
    """The shipped architecture of MoCo v3 'base' replaced by the tiny one (shipped configs are read by name)."""
    for shipped in CONFIG_DIR.glob("*.json"):
        shutil.copy(shipped, tmp_path)
    spec = {"model": {**MOCO_TINY, "layer_norm_eps": 1e-6}, "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD}
    (tmp_path / "mocov3_vitb.json").write_text(json.dumps(spec))
    monkeypatch.setattr("rae.encoders.hf.CONFIG_DIR", tmp_path)


def test_mocov3_loads_an_rcg_checkpoint_as_repa_converts_it(folders, tiny_mocov3_architecture):
    """Base encoder only, misnamed keys of blocks 13/14 repaired, heads dropped, 3x3 table resampled to 4x4."""
    pixels = torch.randn(2, 3, 32, 32)
    reference = tiny_vit(32)
    state = tiny_mocov3_reference().state_dict()
    state["pos_embed"] = timm_resampled(state["pos_embed"], 4)
    reference.load_state_dict(state)
    encoder = loaded(MoCoV3(input_size=32, weights=str(folders["mocov3"])))
    with torch.no_grad():
        expected, ours = reference.forward_features(pixels)[:, 1:], encoder.tokens(pixels)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)
    assert encoder.pixel_mean == IMAGENET_MEAN


def test_mocov3_weights_refusals_name_the_file(tmp_path):
    with torch.device("meta"):
        published = MoCoV3(variant="large")
    assert published.weights == "ckpts/mocov3_vitl.pth" and published.hidden_size == 1024
    with pytest.raises(WeightsNotFound, match=r"ckpts/mocov3_vitl.pth \(no such file\).*RCG"):
        published.load_pretrained(allow_random=False, log=LOG)
    wrong = tmp_path / "not_moco.pth"
    torch.save({"model": {"blocks.0.norm1.weight": torch.ones(2)}}, wrong)
    with pytest.raises(ValueError, match=f"{wrong}: expected a MoCo v3 checkpoint"):
        MoCoV3(weights=str(wrong), input_size=32).load_pretrained(allow_random=False, log=LOG)


# REPA's targets at 256-px images: (registered encoder, hub id or checkpoint, pixels fed, width).
REPA_FACTS = {
    "dinov2-vit-s": ("dinov2", "facebook/dinov2-small", 224, 384),
    "dinov2-vit-b": ("dinov2", "facebook/dinov2-base", 224, 768),
    "dinov2-vit-l": ("dinov2", "facebook/dinov2-large", 224, 1024),
    "dinov2-vit-g": ("dinov2", "facebook/dinov2-giant", 224, 1536),
    "dinov2reg-vit-b": ("dinov2", "facebook/dinov2-with-registers-base", 224, 768),
    "dinov1-vit-b": ("dinov1", "facebook/dino-vitb16", 256, 768),
    "clip-vit-L": ("clip", "openai/clip-vit-large-patch14", 224, 1024),
    "jepa-vit-h": ("ijepa", "facebook/ijepa_vith14_1k", 224, 1280),
    "mae-vit-l": ("mae", "facebook/vit-mae-large", 256, 1024),
    "mocov3-vit-b": ("mocov3", "ckpts/mocov3_vitb.pth", 256, 768),
    "mocov3-vit-l": ("mocov3", "ckpts/mocov3_vitl.pth", 256, 1024),
}


def describe(encoder: Encoder) -> tuple:
    """What decides an encoder's tokens: family, weights, input size, grid, width, norms, resampling."""
    final_norm = getattr(encoder.model, "layernorm", getattr(encoder.model, "post_layernorm", None))
    return (encoder.name, encoder.weights, encoder.input_size, encoder.token_grid, encoder.hidden_size,
            encoder.pixel_mean, encoder.pixel_std, getattr(encoder, "resample_positions", None),
            type(final_norm).__name__, getattr(final_norm, "elementwise_affine", None))


@pytest.mark.parametrize("name", list(REPA_FACTS))
def test_repa_names_build_repas_targets_on_16x16_grids(name):
    family, weights, size, width = REPA_FACTS[name]
    with torch.device("meta"):
        (encoder,) = repa_encoders(name)
    assert (encoder.name, encoder.weights, encoder.input_size, encoder.hidden_size) == (family, weights, size, width)
    assert encoder.token_grid == (16, 16)  # SiT-X/2 on 32x32 latents, token for token
    if family in ("dinov2", "dinov1", "mae"):
        assert encoder.resample_positions
    if family != "clip":
        assert encoder.pixel_mean == IMAGENET_MEAN


def test_repa_at_512_px_runs_dinov2_at_448_and_refuses_the_rest():
    with torch.device("meta"):
        (encoder,) = repa_encoders("dinov2-vit-b", resolution=512)
    assert encoder.input_size == 448 and encoder.token_grid == (32, 32)
    with pytest.raises(ValueError, match="512-px images with DINOv2 targets only, got 'clip-vit-L'"):
        repa_encoders("dinov2-vit-b,clip-vit-L", resolution=512)
    with pytest.raises(ValueError, match="unknown REPA target encoder 'dinov3-vit-b'.*dinov2-vit-b"):
        repa_encoders("dinov3-vit-b")


def test_enc_type_string_gives_one_projector_per_target():
    with torch.device("meta"):
        loss_fn = REPALoss("dinov2-vit-b,clip-vit-L,mocov3-vit-l", hidden_size=1152)
    assert [e.name for e in loss_fn.encoders] == ["dinov2", "clip", "mocov3"]
    assert [p[4].out_features for p in loss_fn.projectors] == [768, 1024, 1024]
    with pytest.raises(ValueError, match="repa.resolution = 512 applies only to an --enc-type string"):
        REPALoss(loss_fn.encoders[0], hidden_size=1152, resolution=512)


# gin fragment -> the REPA --enc-type it stands for
FRAGMENTS = {
    "alignment_dinov2_s.gin": "dinov2-vit-s", "alignment_dinov2_b.gin": "dinov2-vit-b",
    "alignment_dinov2_l.gin": "dinov2-vit-l", "alignment_dinov2_g.gin": "dinov2-vit-g",
    "alignment_dinov1_b.gin": "dinov1-vit-b", "alignment_clip_l.gin": "clip-vit-L",
    "alignment_jepa_h.gin": "jepa-vit-h", "alignment_mae_l.gin": "mae-vit-l",
    "alignment_mocov3_b.gin": "mocov3-vit-b", "alignment_mocov3_l.gin": "mocov3-vit-l",
    "alignment_dinov2_b_clip_l.gin": "dinov2-vit-b,clip-vit-L",
}


def test_every_alignment_fragment_is_listed():
    assert sorted(FRAGMENTS) == sorted(p.name for p in (ROOT / "gin" / "repa").glob("alignment_*.gin")
                                       if p.name != "alignment_options.gin")


@pytest.mark.parametrize("fragment", list(FRAGMENTS))
def test_alignment_fragments_build_what_repas_enc_type_builds(fragment):
    gin.clear_config()
    gin.add_config_file_search_path(str(ROOT / "gin"))
    try:
        gin.parse_config_files_and_bindings([str(ROOT / "gin" / "repa" / fragment)], ["repa.hidden_size = 1152"])
        with torch.device("meta"):
            loss_fn = gin.get_configurable("loss.repa")()
    finally:
        gin.clear_config()
    with torch.device("meta"):
        expected = repa_encoders(FRAGMENTS[fragment])
    assert [describe(e) for e in loss_fn.encoders] == [describe(e) for e in expected]
    assert (loss_fn.encoder_depth, loss_fn.proj_coeff, loss_fn.projectors[0][0].out_features) == (8, 0.5, 2048)


# Published parameter counts (the towers REPA aligns with; what is not built is left out):
# DINO ViT-B/16 86M (no pooler), CLIP ViT-L/14 vision 304M (without ln_post and the projection),
# I-JEPA ViT-H/14 632M, MoCo v3 ViT-B/16 86M and ViT-L/16 304M (RCG, 256 px).
PUBLISHED_SIZES = {"dinov1-vit-b": 86.0e6, "clip-vit-L": 303.2e6, "jepa-vit-h": 632.0e6, "mocov3-vit-b": 86.0e6,
                   "mocov3-vit-l": 304.0e6}


@pytest.mark.parametrize("name", list(PUBLISHED_SIZES))
def test_shipped_configs_give_published_sizes(name):
    with torch.device("meta"):
        (encoder,) = repa_encoders(name)
    assert sum(p.numel() for p in encoder.parameters()) == pytest.approx(PUBLISHED_SIZES[name], rel=5e-3)


def test_two_targets_train_a_tiny_sit_and_the_alignment_is_their_mean(tmp_path, folders, tiny_dinov2_dir):
    """repa_tiny.gin with DINOv2 and CLIP targets: the logged alignment is the mean of the two -cosines."""
    bindings = [
        "repa.encoders = [@repa_target/encoder.dinov2(), @repa_target/encoder.clip()]",
        f"repa_target/dinov2.weights = '{tiny_dinov2_dir}'", "repa_target/dinov2.variant = 'small'",
        f"repa_target/clip.weights = '{folders['clip']}'", "repa_target/clip.input_size = 32",
        "stage2.total_steps = 2", "stage2.log_every = 1", "stage2.sample_every = 0", "stage2.num_workers = 0",
    ]
    experiment = build(ROOT / "experiments" / "repa_tiny.gin", bindings)
    alignment = experiment.alignment
    assert len(alignment.projectors) == 2
    seen: dict[str, list] = {"targets0": [], "targets1": [], "projected": []}
    for i, encoder in enumerate(alignment.encoders):
        encoder.register_forward_hook(lambda m, args, out, i=i: seen[f"targets{i}"].append(out.detach()))
    alignment.projectors.register_forward_hook(lambda m, args, out: seen["projected"].append([z.detach() for z in out]))
    tracker = Recorder()
    run_experiment(experiment, tmp_path, tracker)
    assert len(seen["projected"]) == 2
    for step in (1, 2):
        per_target = [-F.cosine_similarity(seen["projected"][step - 1][i], seen[f"targets{i}"][step - 1], dim=-1).mean()
                      for i in range(2)]
        assert not torch.isclose(per_target[0], per_target[1])
        logged = tracker.scalars["loss/alignment"][step]
        assert logged == pytest.approx(float(sum(per_target) / 2), rel=1e-5, abs=1e-6)
        diffusion = tracker.scalars["loss/diffusion"][step]
        assert tracker.scalars["loss"][step] == pytest.approx(diffusion + 0.5 * logged, rel=1e-5)


def test_resampling_needs_the_checkpoints_position_table(folders):
    encoder = DINOv1(input_size=32, weights=str(folders["dinov1"]))
    state = {k: v for k, v in encoder.model.state_dict().items() if "position" not in k}
    with pytest.raises(ValueError, match="no position table 'embeddings.position_embeddings'.*dinov1"):
        encoder.adopt(state, "a checkpoint")
