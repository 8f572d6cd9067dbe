"""Encoders: tokens against the raw transformers models, RAE's golden latents, weights policy, sizes."""
from __future__ import annotations

import logging
from pathlib import Path

import gin
import pytest
import torch
from torch.nn import functional as F
from transformers import Dinov2Model, Dinov2WithRegistersModel, SiglipVisionModel, ViTMAEModel

from rae.encoders import latent_to_tokens, tokens_to_latent
from rae.encoders.dinov2 import DINOv2
from rae.encoders.hf import TransformersEncoder, shipped_architecture
from rae.encoders.mae import MAE
from rae.encoders.siglip2 import SigLIP2
from rae.registry import ENCODERS
from rae.weights import WeightsNotFound

log = logging.getLogger("test_encoders")
GIN_DIR = Path(__file__).resolve().parent.parent / "gin"

# name -> (folder fixture, encoder factory, raw transformers class, prefix tokens, input size)
TINY = {
    "dinov2_registers": ("tiny_dinov2_registers_dir", lambda **kw: DINOv2(registers=True, **kw),
                         Dinov2WithRegistersModel, 5, 56),
    "dinov2": ("tiny_dinov2_dir", lambda **kw: DINOv2(registers=False, **kw), Dinov2Model, 1, 56),
    "siglip2": ("tiny_siglip_dir", SigLIP2, SiglipVisionModel, 0, 32),
    "mae": ("tiny_mae_dir", MAE, ViTMAEModel, 1, 32),
}


def loaded(request, name: str, **kwargs) -> TransformersEncoder:
    """The tiny encoder ``name`` with its weights loaded from its local folder."""
    fixture, make, _, _, size = TINY[name]
    encoder = make(weights=str(request.getfixturevalue(fixture)), input_size=size, **kwargs)
    encoder.load_pretrained(allow_random=False, log=log)
    return encoder


def raw_final_hidden(name: str, folder: Path, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The plain transformers model's last_hidden_state, last layer before the final norm, ids_restore."""
    _, _, cls, _, _ = TINY[name]
    model = cls.from_pretrained(folder).eval()
    kwargs = {}
    if cls is ViTMAEModel:
        model.config.mask_ratio = 0.0
    if cls is SiglipVisionModel:
        kwargs["interpolate_pos_encoding"] = True
    out = model(pixel_values=pixels, output_hidden_states=True, **kwargs)
    return out.last_hidden_state, out.hidden_states[-1], getattr(out, "ids_restore", None)


@pytest.mark.parametrize("name", ["dinov2_registers", "dinov2", "siglip2"])
def test_tokens_are_the_patch_slice_of_the_raw_model(request, name):
    """Ours = the raw model's final hidden states with CLS/registers dropped, normed without affine."""
    fixture, _, _, prefix, size = TINY[name]
    pixels = torch.randn(2, 3, size, size)
    last, pre_norm, _ = raw_final_hidden(name, request.getfixturevalue(fixture), pixels)
    encoder, encoder_affine = loaded(request, name), loaded(request, name, final_norm_affine=True)
    plain = F.layer_norm(pre_norm, pre_norm.shape[-1:], eps=encoder.model.config.layer_norm_eps)
    with torch.no_grad():
        ours, ours_affine = encoder.tokens(pixels), encoder_affine.tokens(pixels)
    torch.testing.assert_close(ours, plain[:, prefix:], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours_affine, last[:, prefix:], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(ours, ours_affine, atol=1e-3)  # the saved norm's affine is not trivial


def test_mae_tokens_come_back_in_raster_order(request, tiny_mae_dir):
    """The raw ViT-MAE shuffles tokens (random noise) even at mask_ratio 0; ours are unshuffled."""
    pixels = torch.randn(2, 3, 32, 32)
    torch.manual_seed(0)
    last, _, ids_restore = raw_final_hidden("mae", tiny_mae_dir, pixels)
    shuffled = last[:, 1:]
    unshuffled = torch.gather(shuffled, 1, ids_restore.unsqueeze(-1).expand_as(shuffled))
    with torch.no_grad():
        ours = loaded(request, "mae", final_norm_affine=True).tokens(pixels)
    torch.testing.assert_close(ours, unshuffled, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(ours, shuffled, atol=1e-3)
    # raster order, seen directly: changing only the top-left patch changes token 0 most
    edited = pixels.clone()
    edited[:, :, :8, :8] += 3.0
    with torch.no_grad():
        base = loaded(request, "mae").tokens(pixels)
        moved = (loaded(request, "mae").tokens(edited) - base).norm(dim=-1)
    assert (moved.argmax(dim=1) == 0).all()


@pytest.mark.parametrize("name", list(TINY))
def test_shapes_frozen_and_deterministic(request, name):
    encoder = loaded(request, name)
    grid = encoder.input_size // encoder.patch_size
    images = torch.rand(3, 3, 40, 40)  # any size: the encoder resizes to its input size
    first, second = encoder(images), encoder(images)
    assert first.shape == (3, grid * grid, encoder.hidden_size)
    assert encoder.token_grid == (grid, grid)
    assert torch.equal(first, second)
    assert all(not p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.training and not any(m.training for m in encoder.modules())


def test_pixel_normalisation_comes_from_the_folder(request):
    assert loaded(request, "siglip2").pixel_std == (0.5, 0.5, 0.5)
    assert loaded(request, "dinov2").pixel_mean == (0.485, 0.456, 0.406)


def test_golden_rae_encoder_half(golden_dir):
    """RAE's encode: tokens -> (B, C, h, w) -> (z - mean) / sqrt(var + 1e-5) matches the reference."""
    golden = torch.load(golden_dir / "rae.pt", weights_only=True)
    stats = torch.load(golden_dir / "tiny_stats.pt", weights_only=True)
    encoder = DINOv2(registers=True, input_size=golden["config"]["encoder_input_size"],
                     weights=str(golden_dir / "tiny_dinov2_registers"))
    encoder.load_pretrained(allow_random=False, log=log)
    with torch.no_grad():
        latent = tokens_to_latent(encoder(golden["inputs"]["image"]), encoder.token_grid)
    normalised = (latent - stats["mean"]) / torch.sqrt(stats["var"] + 1e-5)
    assert normalised.shape == golden["outputs"]["latent"].shape
    torch.testing.assert_close(normalised, golden["outputs"]["latent"], atol=1e-5, rtol=1e-4)


def test_tokens_to_latent_is_a_raster_reshape():
    tokens = torch.arange(2 * 6 * 3, dtype=torch.float32).view(2, 6, 3)
    latent = tokens_to_latent(tokens, (2, 3))
    assert latent.shape == (2, 3, 2, 3)
    assert latent[1, 2, 1, 0] == tokens[1, 3, 2]  # row 1, column 0 is token 1 * 3 + 0
    assert torch.equal(latent_to_tokens(latent), tokens)
    with pytest.raises(ValueError, match="2x2 grid"):
        tokens_to_latent(tokens, (2, 2))


def test_missing_folder_refuses_or_warns(tmp_path, caplog):
    folder = tmp_path / "no_such_encoder"
    with torch.device("meta"):  # a real-size architecture (from the shipped config), built for free
        encoder = DINOv2(variant="small", weights=str(folder))
    with pytest.raises(WeightsNotFound, match=str(folder)) as err:
        encoder.load_pretrained(allow_random=False, log=log)
    assert "hf download facebook/dinov2-with-registers-small" in str(err.value)
    with caplog.at_level(logging.WARNING):
        encoder.load_pretrained(allow_random=True, log=log)
    assert "RANDOM WEIGHTS" in caplog.text and str(folder) in caplog.text


def test_missing_hub_id_offline_names_the_id(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with torch.device("meta"):
        encoder = MAE(weights="nobody-here/no-such-mae")
        unset = MAE(weights=None)
    with pytest.raises(WeightsNotFound, match="nobody-here/no-such-mae") as err:
        encoder.load_pretrained(allow_random=False, log=log)
    assert "hf download facebook/vit-mae-base" in str(err.value)
    with pytest.raises(WeightsNotFound, match="weights=None"):
        unset.load_pretrained(allow_random=False, log=log)


def test_random_weights_proceed_when_allowed(tmp_path, tiny_dinov2_registers_dir):
    """A folder with a config but no weights file: refused, or random weights with a warning."""
    folder = tmp_path / "config_only"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_dinov2_registers_dir / "config.json").read_text())
    encoder = DINOv2(weights=str(folder), input_size=28)
    with pytest.raises(WeightsNotFound, match=str(folder)):
        encoder.load_pretrained(allow_random=False, log=log)
    before = [p.clone() for p in encoder.parameters()]
    encoder.load_pretrained(allow_random=True, log=log)
    assert all(torch.equal(a, b) for a, b in zip(before, encoder.parameters()))
    assert encoder(torch.rand(1, 3, 32, 32)).shape == (1, 4, 32)


def test_wrong_family_and_bad_input_size_are_clear_errors(tiny_dinov2_dir, tiny_mae_dir):
    with pytest.raises(ValueError, match="'dinov2'.*expected 'dinov2_with_registers'"):
        DINOv2(registers=True, weights=str(tiny_dinov2_dir))
    with pytest.raises(ValueError, match="'vit_mae'.*expected 'siglip_vision_model'"):
        SigLIP2(weights=str(tiny_mae_dir))
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        DINOv2(variant="small", input_size=256)
    with pytest.raises(ValueError, match="unknown variant 'huge'"):
        DINOv2(variant="huge")


# Published parameter counts. DINOv2: the hub pages of facebook/dinov2-* (registers add 4 x width).
# SigLIP2: the towers with their attention-pooling head, as timm's vit_*_patch16_siglip_256 cards.
# MAE: the ViT-B/L/H encoders (MAE paper; ViT-L/16 as counted by timm).
PUBLISHED = {
    ("dinov2", "small"): 22.1e6, ("dinov2", "base"): 86.6e6, ("dinov2", "large"): 304.4e6,
    ("dinov2", "giant"): 1136.5e6,
    ("siglip2", "base"): 92.9e6, ("siglip2", "large"): 316.0e6, ("siglip2", "so400m"): 428.0e6,
    ("mae", "base"): 86.0e6, ("mae", "large"): 304.0e6, ("mae", "huge"): 632.0e6,
}
TOWERS = {"dinov2": (Dinov2WithRegistersModel, "facebook/dinov2-with-registers-{}"),
          "siglip2": (SiglipVisionModel, "google/siglip2-{}-patch16-256"), "mae": (ViTMAEModel, "facebook/vit-mae-{}")}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("family,variant", list(PUBLISHED))
def test_shipped_configs_give_published_sizes(family, variant):
    cls, hub = TOWERS[family]
    arch = shipped_architecture(hub.format(variant))
    with torch.device("meta"):
        tower = cls(cls.config_class.from_dict(arch.config))
        encoder = ENCODERS.get(family)(variant=variant, input_size=224 if family != "siglip2" else 256)
    assert count(tower) == pytest.approx(PUBLISHED[family, variant], rel=5e-3)
    # what the encoder drops on purpose: the final norm's affine, and SigLIP's pooling head
    head = count(tower.head) if family == "siglip2" else 0
    norm = tower.post_layernorm if family == "siglip2" else tower.layernorm
    assert count(encoder) == count(tower) - head - count(norm)
    assert next(encoder.parameters()).is_meta


def test_dinov2_with_registers_shipped_configs_add_only_registers():
    for variant in ("small", "base", "large", "giant"):
        with torch.device("meta"):
            plain = DINOv2(variant=variant, registers=False, final_norm_affine=True)
            registers = DINOv2(variant=variant, registers=True, final_norm_affine=True)
        assert count(registers) - count(plain) == 4 * plain.hidden_size


@pytest.mark.parametrize("fragment,family,grid,width", [
    ("encoders/dinov2_b.gin", "dinov2", 16, 768),
    ("encoders/dinov2_b_512.gin", "dinov2", 32, 768),
    ("encoders/siglip2_b.gin", "siglip2", 16, 768),
    ("encoders/mae_b.gin", "mae", 16, 768),
])
def test_gin_fragments_build_the_paper_encoders(fragment, family, grid, width):
    gin.clear_config()
    gin.add_config_file_search_path(str(GIN_DIR))
    try:
        gin.parse_config_file(str(GIN_DIR / fragment))
        with torch.device("meta"):
            encoder = gin.get_configurable(f"encoder.{family}")()
    finally:
        gin.clear_config()
    assert encoder.token_grid == (grid, grid) and encoder.hidden_size == width
    assert encoder.weights == encoder.hub_id
    assert encoder.hub_id in {"facebook/dinov2-with-registers-base", "google/siglip2-base-patch16-256",
                              "facebook/vit-mae-base"}
