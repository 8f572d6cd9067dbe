"""REPA's text-to-image MMDiT: golden parity (forward, tapped tokens, Euler + CFG sampler), context condition, gin."""
import re
from pathlib import Path

import gin
import pytest
import torch

from rae.backbones import MMDiT, SiT
from rae.backbones.base import Backbone
from rae.registry import BACKBONES
from rae.repa import REPALoss, from_repa_mmdit_config, load_repa_checkpoint
from rae.repa.t2i import REPA_GRID
from rae.runner import main
from rae.sampling.cfg import ClassifierFreeGuidance
from rae.sampling.fixed_step import EulerSampler
from test_repa import PixelPatches

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "fixtures" / "golden" / "mmdit.pt"
ATOL, RTOL = 1e-5, 1e-4
SAMPLER_ATOL = 1e-4


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=True)


@pytest.fixture(scope="module")
def loaded(golden, tmp_path_factory):
    """The golden model saved as REPA's train_t2i.py does, read back as generate_t2i.py does (``model`` weights)."""
    path = tmp_path_factory.mktemp("repa_t2i") / "0000100.pt"
    noise = {k: torch.randn_like(v) for k, v in golden["state_dict"].items()}  # "ema" must not be used
    torch.save({"model": golden["state_dict"], "ema": noise, "steps": 100}, path)
    backbone, projectors, depth = from_repa_mmdit_config(golden["config"])
    assert load_repa_checkpoint(backbone, path, projectors, prefer="model") == []
    return backbone.eval(), projectors, depth


def tiny(**kwargs) -> MMDiT:
    torch.manual_seed(0)
    return MMDiT(**{"depth": 2, "head_dim": 8, "input_size": 8, "context_dim": 12, **kwargs})


def sampler_setup(golden, backbone, **overrides):
    """REPA's ``euler_sampler`` settings from the golden file: its num_steps steps are num_steps + 1 grid points."""
    kwargs = {**golden["sampler"]["kwargs"], **overrides}
    assert not kwargs["heun"], "the golden sampler is REPA's plain Euler"
    guidance = ClassifierFreeGuidance(kwargs["cfg_scale"], t_min=kwargs["guidance_low"], t_max=kwargs["guidance_high"])
    return EulerSampler(num_steps=kwargs["num_steps"] + 1), guidance


# ---- golden parity ----

def test_forward_matches_reference(golden, loaded):
    backbone, projectors, depth = loaded
    inputs = golden["inputs"]
    with torch.no_grad():
        out, tokens = backbone(inputs["x"], inputs["t"], inputs["context"], return_tokens_at=depth)
        zs = projectors(tokens)
        plain = backbone(inputs["x"], inputs["t"], inputs["context"])
    torch.testing.assert_close(out, golden["outputs"]["x"], atol=ATOL, rtol=RTOL)
    assert len(zs) == len(golden["outputs"]["zs"]) == len(golden["config"]["z_dims"])
    for ours, reference in zip(zs, golden["outputs"]["zs"]):
        torch.testing.assert_close(ours, reference, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(plain, out)


def test_euler_sampler_with_cfg_against_the_empty_caption_matches_reference(golden, loaded):
    backbone, _, _ = loaded
    ref = golden["sampler"]
    sampler, guidance = sampler_setup(golden, backbone)
    with torch.no_grad():
        out = sampler.sample(guidance.velocity_fn(backbone, null_condition=ref["null_context"]),
                             ref["latents"], ref["context"])
        # One row of the empty caption's context broadcasts to the batch (REPA repeats it).
        one_row = sampler.sample(guidance.velocity_fn(backbone, null_condition=ref["null_context"][0]),
                                 ref["latents"], ref["context"])
        unguided = sampler.sample(backbone, ref["latents"], ref["context"])
        whole_interval = sampler.sample(
            sampler_setup(golden, backbone, guidance_low=0.0, guidance_high=1.0)[1].velocity_fn(
                backbone, null_condition=ref["null_context"]), ref["latents"], ref["context"])
    torch.testing.assert_close(out.double(), ref["output"], atol=SAMPLER_ATOL, rtol=RTOL)
    torch.testing.assert_close(one_row, out)
    # Guidance and its interval both change the result by far more than the tolerance.
    assert (unguided.double() - ref["output"]).abs().max() > 10 * SAMPLER_ATOL
    assert (whole_interval.double() - ref["output"]).abs().max() > 10 * SAMPLER_ATOL


def test_position_table_is_repas_sincos(golden):
    """The golden state's ``pos_embed`` is REPA's numpy sin-cos table (a buffer, never perturbed)."""
    backbone, _, _ = from_repa_mmdit_config(golden["config"])
    torch.testing.assert_close(backbone.pos_embed, golden["state_dict"]["pos_embed"], atol=1e-6, rtol=0)
    assert "pos_embed" not in dict(backbone.named_parameters())  # REPA counts no parameters for it


def test_last_block_has_no_context_output_half(golden, loaded):
    backbone, _, _ = loaded
    last = f"joint_blocks.{golden['config']['depth'] - 1}.context_block."
    assert sorted(k[len(last):] for k in golden["state_dict"] if k.startswith(last)) == sorted(
        k[len(last):] for k in backbone.state_dict() if k.startswith(last))
    with pytest.raises(ValueError, match="out_proj=False"):
        backbone.joint_blocks[-1].context_block.attn.merge(torch.zeros(1, 2, 3, 32))


# ---- REPA config and checkpoint ----

def test_reference_config_errors_are_clear(golden):
    with pytest.raises(ValueError, match="unknown keys.*hidden_size"):
        from_repa_mmdit_config({**golden["config"], "hidden_size": 64})
    with pytest.raises(ValueError, match="swiglu=True are not implemented"):
        from_repa_mmdit_config({**golden["config"], "swiglu": True})
    with pytest.raises(ValueError, match=f"{REPA_GRID} x {REPA_GRID} token grid"):
        from_repa_mmdit_config({**golden["config"], "input_size": 2 * golden["config"]["input_size"]})
    backbone, _, _ = from_repa_mmdit_config({**golden["config"], "attn_mode": "xformers", "qkv_bias": False})
    assert backbone.joint_blocks[0].x_block.attn.qkv.bias is None


def test_loader_without_projectors_returns_the_skipped_keys(golden):
    backbone, _, _ = from_repa_mmdit_config(golden["config"])
    skipped = load_repa_checkpoint(backbone, {"model": golden["state_dict"]}, prefer="model")
    assert skipped == sorted(k for k in golden["state_dict"] if k.startswith("projectors."))
    torch.testing.assert_close(backbone.context_embedder.weight, golden["state_dict"]["context_embedder.weight"])


# ---- the context condition ----

def test_condition_is_a_context_and_is_checked():
    model = tiny().eval()
    x, t = torch.randn(2, 4, 8, 8), torch.rand(2)
    assert (MMDiT.condition, SiT.condition) == ("context", "label")
    out, tokens = model(x, t, torch.randn(2, 3, 12), return_tokens_at=2)
    assert out.shape == x.shape and tokens.shape == (2, 16, model.token_width(2)) and model.hidden_size == 16
    assert model(x, t, torch.randn(2, 7, 12)).shape == x.shape  # any caption length
    for bad in (torch.zeros(2, dtype=torch.long), torch.randn(2, 3, 768), torch.randn(1, 3, 12)):
        with pytest.raises(ValueError, match=r"caption context y of shape \(2, L, 12\)"):
            model(x, t, bad)
    with pytest.raises(ValueError, match="outside its blocks 1..2"):
        model(x, t, torch.randn(2, 3, 12), return_tokens_at=3)
    with pytest.raises(ValueError, match="expects labels y of shape"):
        SiT(hidden_size=16, depth=1, num_heads=2, input_size=4, num_classes=3)(
            torch.randn(2, 4, 4, 4), t, torch.randn(2, 3, 12))


def test_tapped_tokens_feed_the_output():
    """The tokens after block k are the image stream there: the rest of the network maps them to ``out``."""
    model = tiny(depth=3).eval()
    x, t, context = torch.randn(2, 4, 8, 8), torch.rand(2), torch.randn(2, 5, 12)
    with torch.no_grad():
        _, first = model(x, t, context, return_tokens_at=1)
        _, last = model(x, t, context, return_tokens_at=3)
        c = model.t_embedder(t)
        h, ctx = model.x_embedder(x) + model.pos_embed, model.context_embedder(context)
        ctx, h = model.joint_blocks[0](ctx, h, c)
        torch.testing.assert_close(first, h)
        for block in model.joint_blocks[1:]:
            ctx, h = block(ctx, h, c)
    assert ctx is None
    torch.testing.assert_close(last, h)


def test_condition_names_are_checked_on_subclasses():
    with pytest.raises(ValueError, match="condition = 'caption'; expected one of label, context"):
        type("Captioned", (Backbone,), {"condition": "caption"})


def test_cfg_null_condition_errors_are_clear():
    model = tiny().eval()
    x, t, context = torch.randn(2, 4, 8, 8), torch.full((2,), 0.5), torch.randn(2, 3, 12)
    with pytest.raises(ValueError, match="needs the null label.*null_condition"):
        ClassifierFreeGuidance(2.0).velocity_fn(model)
    with pytest.raises(ValueError, match=r"null condition \(4, 12\) does not broadcast .* \(2, 3, 12\)"):
        ClassifierFreeGuidance(2.0).velocity_fn(model, null_condition=torch.zeros(4, 12))(x, t, context)


def test_cfg_with_a_null_context_mixes_the_two_halves():
    model = tiny().eval()
    x, t, context, null = torch.randn(2, 4, 8, 8), torch.full((2,), 0.5), torch.randn(2, 3, 12), torch.randn(3, 12)
    with torch.no_grad():
        v = ClassifierFreeGuidance(3.0).velocity_fn(model, null_condition=null)(x, t, context)
        cond, uncond = model(x, t, context), model(x, t, null.expand(2, 3, 12))
    torch.testing.assert_close(v, uncond + 3.0 * (cond - uncond), atol=1e-5, rtol=1e-4)


# ---- initialisation ----

def test_release_init_is_pytorchs_default_and_adaln_zero_starts_at_zero():
    x, t, context = torch.randn(2, 4, 8, 8), torch.rand(2), torch.randn(2, 3, 12)
    release, zero = tiny(), tiny(init="adaln_zero")
    assert release.joint_blocks[0].x_block.adaLN_modulation[1].weight.abs().sum() > 0  # as REPA: not zeroed
    assert release.final_layer.linear.weight.abs().sum() > 0
    with torch.no_grad():
        assert release(x, t, context).abs().max() > 0
        assert torch.equal(zero(x, t, context), torch.zeros_like(x))
    with pytest.raises(ValueError, match="mmdit.init must be one of release, adaln_zero"):
        tiny(init="xavier")


@pytest.mark.parametrize("init", ["release", "adaln_zero"])
def test_meta_build_materialises(init):
    with torch.device("meta"):
        model = tiny(init=init)
    model.to_empty(device="cpu")
    model.initialize_weights()
    fresh = tiny(init=init)
    torch.testing.assert_close(model.pos_embed, fresh.pos_embed)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert model(torch.randn(1, 4, 8, 8), torch.rand(1), torch.randn(1, 2, 12)).shape == (1, 4, 8, 8)


# ---- registration and gin ----

def test_listed_as_a_backbone(capsys):
    assert BACKBONES.get("mmdit") is MMDiT
    assert main(["--list", "backbone"]) == 0
    assert "@backbone.mmdit(depth=24, head_dim=32" in capsys.readouterr().out


def _parse(*files: str, bindings: tuple[str, ...] = ()) -> None:
    gin.clear_config()
    gin.add_config_file_search_path(str(ROOT / "gin"))
    gin.parse_config_files_and_bindings([str(ROOT / f) for f in files], list(bindings))


@pytest.mark.parametrize("fragment", sorted(p.name for p in (ROOT / "gin" / "repa").glob("mmdit_d*.gin")))
def test_gin_presets_build_the_documented_model(fragment):
    text = (ROOT / "gin" / "repa" / fragment).read_text()
    documented = int(re.search(r"parameters: ([\d,]+)", text).group(1).replace(",", ""))
    width = int(re.search(r"repa.hidden_size = (\d+)", text).group(1))
    try:
        _parse(f"gin/repa/{fragment}")
        with torch.device("meta"):
            model = gin.get_configurable("backbone.mmdit")()
    finally:
        gin.clear_config()
    assert sum(p.numel() for p in model.parameters()) == documented
    assert (model.hidden_size, model.grid_size, model.context_dim) == (width, REPA_GRID, 768)


def test_tiny_gin_built_mmdit_trains_with_the_alignment_loss():
    """The options fragment plus tiny sizes: a forward, REPA's alignment on the tapped tokens, gradients."""
    try:
        _parse("gin/repa/mmdit_options.gin",
               bindings=("mmdit.depth = 2", "mmdit.head_dim = 8", "mmdit.input_size = 8", "mmdit.context_dim = 12"))
        torch.manual_seed(0)
        model = gin.get_configurable("backbone.mmdit")()
    finally:
        gin.clear_config()
    loss_fn = REPALoss(PixelPatches(), hidden_size=model.token_width(1), encoder_depth=1, projector_dim=16)
    loss_fn.check_backbone(model)
    x, t, context = torch.randn(2, 4, 8, 8), torch.rand(2), torch.randn(2, 3, 12)
    out, tokens = model(x, t, context, return_tokens_at=loss_fn.encoder_depth)
    alignment, metrics = loss_fn(tokens, torch.rand(2, 3, 16, 16))
    (out.pow(2).mean() + alignment).backward()
    assert out.shape == x.shape and -1 <= metrics["align_loss"] <= 1
    assert model.joint_blocks[0].x_block.attn.qkv.weight.grad.abs().sum() > 0
    assert model.context_embedder.weight.grad.abs().sum() > 0
