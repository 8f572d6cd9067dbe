"""REPA's SiT: golden parity with the reference model and sampler, presets, released-checkpoint loading."""
import argparse
from pathlib import Path

import pytest
import torch

from rae.backbones.sit import SiT
from rae.registry import BACKBONES
from rae.repa.checkpoint import from_repa_config, load_repa_checkpoint, read_repa_checkpoint
from rae.sampling.cfg import ClassifierFreeGuidance
from rae.sampling.fixed_step import EulerSampler

GOLDEN = Path(__file__).parent / "fixtures" / "golden" / "repa_sit.pt"


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=True)


@pytest.fixture(scope="module")
def loaded(golden, tmp_path_factory):
    """The golden model saved in REPA's training-checkpoint layout, then read back through our loader."""
    path = tmp_path_factory.mktemp("repa") / "0000100.pt"
    args = argparse.Namespace(model="SiT-XL/2", encoder_depth=golden["config"]["encoder_depth"])
    noise = {k: torch.randn_like(v) for k, v in golden["state_dict"].items()}  # "model" must not be used
    torch.save({"model": noise, "ema": golden["state_dict"], "args": args, "steps": 100}, path)
    backbone, projectors, depth = from_repa_config(golden["config"])
    assert load_repa_checkpoint(backbone, path, projectors) == []
    return backbone.eval(), projectors, depth


def test_forward_matches_reference(golden, loaded):
    backbone, projectors, depth = loaded
    x, t, y = golden["inputs"]["x"], golden["inputs"]["t"], golden["inputs"]["y"]
    with torch.no_grad():
        out, tokens = backbone(x, t, y, return_tokens_at=depth)
        zs = projectors(tokens)
        plain = backbone(x, t, y)
    torch.testing.assert_close(out, golden["outputs"]["x"], atol=1e-5, rtol=1e-4)
    assert len(zs) == len(golden["outputs"]["zs"]) == 1
    torch.testing.assert_close(zs[0], golden["outputs"]["zs"][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(plain, out)


def test_euler_sampler_with_cfg_interval_matches_reference(golden, loaded):
    """REPA's ``euler_sampler`` is our Euler sampler plus CFG: its ``num_steps`` steps are num_steps + 1 grid points."""
    backbone, _, _ = loaded
    ref = golden["sampler"]
    kwargs = ref["kwargs"]
    guidance = ClassifierFreeGuidance(kwargs["cfg_scale"], t_min=kwargs["guidance_low"], t_max=kwargs["guidance_high"])
    velocity = guidance.velocity_fn(backbone, num_classes=backbone.num_classes)
    sampler = EulerSampler(num_steps=kwargs["num_steps"] + 1)
    with torch.no_grad():
        out = sampler.sample(velocity, ref["latents"], ref["y"])
        unguided = sampler.sample(backbone, ref["latents"], ref["y"])
    torch.testing.assert_close(out.double(), ref["output"], atol=1e-4, rtol=1e-4)
    assert (unguided.double() - ref["output"]).abs().max() > 1e-2  # the guidance interval matters here


def test_presets_have_repa_parameter_counts():
    """SiT-XL/2 is DiT-XL/2 (675,129,632) without the learned-sigma half of the output layer (1152*16 + 16)."""
    with torch.device("meta"):
        counts = {size: sum(p.numel() for p in SiT(size).parameters()) for size in ("B/2", "L/2", "XL/2", "XL/1")}
    assert counts["XL/2"] == 675_129_632 - (1152 * 16 + 16)
    assert counts["B/2"] == 130_500_112
    assert counts["L/2"] == 458_086_416
    # patch 1: 768 more frozen positions, a 12-weight-per-channel smaller patch embedding and output layer
    assert counts["XL/1"] - counts["XL/2"] == (1024 - 256) * 1152 - 12 * 1152 - 12 * 1153
    assert BACKBONES.get("sit") is SiT
    with torch.device("meta"):
        model = SiT("XL/2", depth=2)
    assert (model.hidden_size, model.patch_size, model.grid_size, len(model.blocks)) == (1152, 2, 16, 2)


def test_unknown_size_names_the_choices():
    with pytest.raises(ValueError, match="XL/2"):
        SiT("XXL/2")


def test_loader_reports_missing_and_unexpected_keys(golden):
    backbone, projectors, _ = from_repa_config(golden["config"])
    state = dict(golden["state_dict"])
    state.pop("blocks.1.attn.qkv.weight")
    state["blocks.9.attn.proj.bias"] = torch.zeros(32)
    expected = r"missing: blocks\.1\.attn\.qkv\.weight.*unexpected: blocks\.9\.attn\.proj\.bias"
    with pytest.raises(ValueError, match=expected):
        load_repa_checkpoint(backbone, {"ema": state}, projectors)


def test_loader_without_projectors_returns_the_skipped_keys(golden):
    backbone, _, _ = from_repa_config(golden["config"])
    skipped = load_repa_checkpoint(backbone, {"ema": golden["state_dict"]})
    assert skipped == sorted(k for k in golden["state_dict"] if k.startswith("projectors."))
    torch.testing.assert_close(backbone.final_layer.linear.weight, golden["state_dict"]["final_layer.linear.weight"])


def test_loader_renames_legacy_decoder_blocks(golden, loaded):
    """Early REPA checkpoints call the blocks after encoder_depth ``decoder_blocks.(i - depth)``."""
    depth = golden["config"]["encoder_depth"]
    legacy = {}
    for key, value in golden["state_dict"].items():
        parts = key.split(".")
        if parts[0] == "blocks" and int(parts[1]) >= depth:
            key = ".".join(["decoder_blocks", str(int(parts[1]) - depth), *parts[2:]])
        legacy[key] = value
    assert any(k.startswith("decoder_blocks.0.") for k in legacy)
    backbone, projectors, _ = from_repa_config(golden["config"])
    load_repa_checkpoint(backbone, {"ema": legacy}, projectors, encoder_depth=depth)
    torch.testing.assert_close(backbone.blocks[depth].mlp.fc1.weight, loaded[0].blocks[depth].mlp.fc1.weight)


def test_reference_config_errors_are_clear(golden):
    with pytest.raises(ValueError, match="unknown keys.*learn_sigma"):
        from_repa_config({**golden["config"], "learn_sigma": True})
    with pytest.raises(ValueError, match="decoder_hidden_size == hidden_size"):
        from_repa_config({**golden["config"], "decoder_hidden_size": 64})


def test_checkpoint_reader_uses_weights_only(tmp_path):
    """A pickled object other than the allowed Namespace is refused, not executed."""
    path = tmp_path / "bad.pt"
    torch.save({"ema": {}, "args": Path("x")}, path)
    with pytest.raises(Exception, match="weights_only|Unsupported global"):
        read_repa_checkpoint(path)


def test_return_tokens_at_is_checked():
    model = SiT(hidden_size=16, depth=2, num_heads=2, input_size=4, num_classes=3)
    x, t, y = torch.randn(1, 4, 4, 4), torch.rand(1), torch.zeros(1, dtype=torch.long)
    with pytest.raises(ValueError, match="outside its blocks 1..2"):
        model(x, t, y, return_tokens_at=3)
    out, tokens = model(x, t, y, return_tokens_at=2)
    assert out.shape == x.shape and tokens.shape == (1, 4, 16)
