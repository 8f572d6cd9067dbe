"""The ViT decoder: sizes and parameter counts, shapes, SDPA, positions, release-checkpoint conversion."""
from __future__ import annotations

from pathlib import Path

import gin
import pytest
import torch

import rae.autoencoder  # noqa: F401  (registers @autoencoder.rae, bound by the gin fragments)
from rae.weights import StateDictMismatch, load_checked, read_state_dict
from rae.decoders.release import convert_release_state_dict
from rae.decoders.vit import VIT_SIZES, ViTDecoder
from rae.registry import DECODERS

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
GIN_DIR = Path(__file__).resolve().parent.parent / "gin" / "decoders"


def expected_parameters(in_channels: int, hidden: int, depth: int, mlp: int, patch: int) -> int:
    """Counted by hand: embed, cls token, blocks (2 LayerNorms, q/k/v/out, 2-layer MLP), norm, head."""
    block = 2 * (2 * hidden) + 4 * (hidden * hidden + hidden) + (hidden * mlp + mlp) + (mlp * hidden + hidden)
    pixels = patch * patch * 3
    return (in_channels * hidden + hidden) + hidden + depth * block + 2 * hidden + (hidden * pixels + pixels)


@pytest.mark.parametrize("size, count", [("B", 86_237_952), ("L", 303_887_104), ("XL", 415_056_640)])
def test_paper_sizes_build_on_meta_with_their_parameter_counts(size, count):
    with torch.device("meta"):
        decoder = ViTDecoder(in_channels=768, token_grid=(16, 16), size=size, patch_size=16)
        image = decoder(torch.empty(2, 768, 16, 16))
    dims = VIT_SIZES[size]
    assert sum(p.numel() for p in decoder.parameters()) == count
    assert count == expected_parameters(768, dims.hidden, dims.depth, dims.mlp, 16)
    assert (len(decoder.blocks), decoder.blocks[0].attn.num_heads) == (dims.depth, dims.heads)
    assert decoder.blocks[0].norm1.eps == 1e-12 and decoder.norm.eps == 1e-12
    assert image.shape == (2, 3, 256, 256)


def test_forward_maps_latent_grid_to_pixels_through_sdpa(monkeypatch):
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    decoder = ViTDecoder(in_channels=32, token_grid=(4, 4), size="tiny", patch_size=8)
    image = decoder(torch.randn(3, 32, 4, 4))
    assert image.shape == (3, 3, 32, 32) and decoder.image_size == (32, 32)
    assert calls == [(3, 3, 17, 16)] * 2  # (B, heads, cls + 16 tokens, head dim) in each of 2 blocks


def test_each_latent_position_decodes_to_its_own_patch():
    """Unpatchify layout: a patch's pixels depend only on its token when attention is switched off."""
    decoder = ViTDecoder(in_channels=8, token_grid=(2, 2), size="tiny", patch_size=4)
    for block in decoder.blocks:
        torch.nn.init.zeros_(block.attn.proj.weight)
        torch.nn.init.zeros_(block.attn.proj.bias)
    latent = torch.randn(1, 8, 2, 2)
    changed = latent.clone()
    changed[0, :, 1, 0] += 1.0  # bottom-left token
    diff = (decoder(changed) - decoder(latent)).abs().sum(dim=1)[0]
    assert diff[4:, :4].min() > 0  # the bottom-left 4x4 patch changes
    assert diff[:4].max() == 0 and diff[4:, 4:].max() == 0


def test_position_embedding_is_the_released_sincos_with_a_zero_cls_slot():
    released = torch.load(GOLDEN / "rae.pt", weights_only=True)["decoder_state_dict"]["decoder_pos_embed"]
    decoder = ViTDecoder(in_channels=32, token_grid=(4, 4), size="tiny", patch_size=8)
    assert "pos_embed" in dict(decoder.named_buffers()) and "pos_embed" in decoder.state_dict()
    torch.testing.assert_close(decoder.pos_embed, released, atol=1e-6, rtol=0)


def test_release_keys_convert_to_ours_with_fused_qkv():
    release = torch.load(GOLDEN / "rae.pt", weights_only=True)["decoder_state_dict"]
    decoder = ViTDecoder(in_channels=32, token_grid=(4, 4), size="tiny", patch_size=8)
    converted = decoder.import_state_dict(release)
    assert sorted(converted) == sorted(decoder.state_dict())
    prefix = "decoder_layers.1.attention.attention."
    expected = torch.cat([release[prefix + p + ".weight"] for p in ("query", "key", "value")])
    assert torch.equal(converted["blocks.1.attn.qkv.weight"], expected)
    assert torch.equal(converted["head.bias"], release["decoder_pred.bias"])
    load_checked(decoder, converted, "decoder", "golden")
    assert decoder.import_state_dict(decoder.state_dict()).keys() == decoder.state_dict().keys()


def test_loading_reports_missing_and_unexpected_keys():
    release = dict(torch.load(GOLDEN / "rae.pt", weights_only=True)["decoder_state_dict"])
    del release["decoder_layers.0.attention.attention.value.weight"]  # breaks one q/k/v triple
    release["decoder_extra.weight"] = torch.zeros(1)
    decoder = ViTDecoder(in_channels=32, token_grid=(4, 4), size="tiny", patch_size=8)
    with pytest.raises(StateDictMismatch) as err:
        load_checked(decoder, convert_release_state_dict(release), "decoder", "model.pt")
    message = str(err.value)
    assert "missing keys ['blocks.0.attn.qkv.weight']" in message
    for key in ("decoder_extra.weight", "decoder_layers.0.attention.attention.query.weight",
                "decoder_layers.0.attention.attention.key.weight"):
        assert key in message.split("unexpected keys")[1]


@pytest.mark.parametrize("wrapper", [None, "model", "ema"])
def test_checkpoint_files_may_wrap_the_state_dict(tmp_path, wrapper):
    state = {"w": torch.arange(3.0)}
    torch.save(state if wrapper is None else {wrapper: state, "step": torch.tensor(7)}, tmp_path / "model.pt")
    assert torch.equal(read_state_dict(tmp_path / "model.pt")["w"], state["w"])


def test_bad_latents_and_sizes_fail_with_what_was_expected():
    decoder = ViTDecoder(in_channels=32, token_grid=(4, 4), size="tiny", patch_size=8)
    with pytest.raises(ValueError, match=r"\(B, 32, 4, 4\), got \(2, 16, 4, 4\)"):
        decoder(torch.zeros(2, 16, 4, 4))
    with pytest.raises(ValueError, match="unknown ViT decoder size 'XXL'; sizes: tiny, mini, B, L, XL"):
        ViTDecoder(in_channels=32, token_grid=(4, 4), size="XXL")


@pytest.mark.parametrize("fragment, size, patch", [
    ("vit_tiny.gin", "tiny", 8), ("vit_b.gin", "B", 16), ("vit_l.gin", "L", 16), ("vit_xl.gin", "XL", 16),
])
def test_gin_fragments_bind_the_decoder_size(fragment, size, patch):
    gin.clear_config()
    try:
        gin.parse_config_file(str(GIN_DIR / fragment))
        assert gin.query_parameter("autoencoder.rae.decoder").configurable.name == "vit"
        with torch.device("meta"):
            decoder = gin.get_configurable(DECODERS.get("vit"))(in_channels=768, token_grid=(16, 16))
    finally:
        gin.clear_config()
    assert (decoder.size, decoder.patch_size) == (size, patch)
