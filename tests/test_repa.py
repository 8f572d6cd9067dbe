"""REPA's alignment loss: the value, where gradients go, token-grid resizing, every backbone, gin configs."""
import logging
from pathlib import Path

import gin
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from rae.backbones.ditdh import DiTDH
from rae.backbones.lightningdit import LightningDiT
from rae.backbones.sit import SiT
from rae.encoders.base import Encoder
from rae.encoders.dinov2 import DINOv2
from rae.registry import EXPERIMENTS, LOSSES
from rae.repa.loss import REPALoss

ROOT = Path(__file__).resolve().parent.parent
LOG = logging.getLogger("test_repa")


class PixelPatches(Encoder):
    """Weight-free target encoder: raw pixel patches as tokens."""

    def __init__(self, patch_size: int = 4, input_size: int = 16) -> None:
        super().__init__()
        self.patch_size, self.input_size = patch_size, input_size
        self.hidden_size = 3 * patch_size * patch_size
        self.pixel_mean, self.pixel_std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        self.freeze()

    def tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        return pixels.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(1, 2)

    def load_pretrained(self, allow_random, log):
        """Nothing to load."""


def tiny_dinov2(folder: Path, registers: bool) -> DINOv2:
    """The conftest tiny DINOv2 (patch 14) at 56 px: 4x4 tokens of width 32, with its saved weights."""
    encoder = DINOv2(variant="small", registers=registers, input_size=56, weights=str(folder), final_norm_affine=True)
    encoder.load_pretrained(allow_random=False, log=LOG)
    return encoder


def tiny_sit(depth: int = 3) -> SiT:
    """SiT on 4 x 8 x 8 latents, patch 2 -> 4x4 tokens of width 32, every weight perturbed off adaLN-Zero."""
    return perturbed(SiT(hidden_size=32, depth=depth, num_heads=2, input_size=8, num_classes=10))


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Zero-initialised gates would make every block the identity (and its gradients zero)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def batch(b: int = 2, side: int = 8, channels: int = 4):
    return torch.randn(b, channels, side, side), torch.rand(b), torch.randint(0, 10, (b,)), torch.rand(b, 3, 32, 32)


def test_registered_as_loss_repa():
    assert LOSSES.get("repa") is REPALoss


def test_loss_is_repa_formula_over_two_targets(tiny_dinov2_dir, tiny_dinov2_registers_dir):
    """proj_coeff * sum_i sum_j mean_tokens(-cos) / (targets * batch), as REPA's loss.py computes it."""
    torch.manual_seed(0)
    encoders = [tiny_dinov2(tiny_dinov2_dir, False), tiny_dinov2(tiny_dinov2_registers_dir, True)]
    loss_fn = REPALoss(encoders, hidden_size=32, encoder_depth=2, proj_coeff=0.5, projector_dim=16)
    backbone = tiny_sit()
    x, t, y, images = batch(3)
    _, tokens = backbone(x, t, y, return_tokens_at=2)
    loss, metrics = loss_fn(tokens, images)

    expected = torch.zeros(())
    with torch.no_grad():
        for projector, encoder in zip(loss_fn.projectors, encoders):
            z_tilde, z = projector(tokens), encoder(images)
            for j in range(3):
                expected += -F.cosine_similarity(z_tilde[j], z[j], dim=-1).mean()
    expected /= 2 * 3
    torch.testing.assert_close(metrics["align_loss"], expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(loss.detach(), 0.5 * expected, atol=1e-6, rtol=1e-5)
    assert loss.requires_grad and not metrics["align_loss"].requires_grad


def test_gradients_reach_backbone_and_projectors_never_the_encoder(tiny_dinov2_dir):
    torch.manual_seed(0)
    encoder = tiny_dinov2(tiny_dinov2_dir, False)
    encoder.requires_grad_(True)  # even unfrozen, the target path must carry no gradient
    loss_fn = REPALoss(encoder, hidden_size=32, encoder_depth=2, projector_dim=16)
    backbone = tiny_sit(depth=3)
    encoder_before = {n: p.detach().clone() for n, p in encoder.named_parameters()}
    projector_before = [p.detach().clone() for p in loss_fn.projectors.parameters()]
    optimizer = torch.optim.AdamW([*backbone.parameters(), *loss_fn.parameters()], lr=1e-2)

    x, t, y, images = batch()
    _, tokens = backbone(x, t, y, return_tokens_at=loss_fn.encoder_depth)
    loss, _ = loss_fn(tokens, images)
    loss.backward()

    assert all(p.grad is None for p in encoder.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss_fn.projectors.parameters())
    assert backbone.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert backbone.blocks[1].mlp.fc2.weight.grad.abs().sum() > 0
    assert backbone.blocks[2].attn.qkv.weight.grad is None  # after block encoder_depth: no alignment gradient

    optimizer.step()
    for name, p in encoder.named_parameters():
        torch.testing.assert_close(p.detach(), encoder_before[name], atol=0, rtol=0, msg=name)
    assert all(not torch.equal(p, q) for p, q in zip(loss_fn.projectors.parameters(), projector_before))


def test_training_only_the_projector_raises_cosine_similarity():
    torch.manual_seed(0)
    loss_fn = REPALoss(PixelPatches(), hidden_size=32, encoder_depth=1, projector_dim=64)
    tokens = torch.randn(4, 16, 32)
    targets = [torch.tanh(tokens @ torch.randn(32, 48))]
    optimizer = torch.optim.Adam(loss_fn.projectors.parameters(), lr=3e-3)
    _, first = loss_fn.align(tokens, targets)
    for _ in range(60):
        loss, _ = loss_fn.align(tokens, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    _, last = loss_fn.align(tokens, targets)
    # align_loss is the mean negative cosine: the similarity rose by more than 0.5
    assert -last["align_loss"] > -first["align_loss"] + 0.5


def test_smaller_backbone_grid_averages_the_covered_target_tokens():
    loss_fn = REPALoss(PixelPatches(), hidden_size=32, encoder_depth=1, projector_dim=16)
    tokens = torch.randn(2, 16, 32)  # 4x4 grid
    fine = torch.randn(2, 64, 48)  # 8x8 grid
    pooled = F.avg_pool2d(fine.transpose(1, 2).reshape(2, 48, 8, 8), 2).flatten(2).transpose(1, 2)
    with pytest.warns(UserWarning, match="8x8 tokens, the backbone 4x4.*area average"):
        resized, _ = loss_fn.align(tokens, [fine])
    same, _ = loss_fn.align(tokens, [pooled])
    torch.testing.assert_close(resized, same)


def test_larger_backbone_grid_interpolates_the_targets():
    loss_fn = REPALoss(PixelPatches(), hidden_size=32, encoder_depth=1, projector_dim=16)
    tokens = torch.randn(2, 16, 32)  # 4x4 grid
    coarse = torch.randn(2, 1, 48).expand(2, 4, 48)  # 2x2 grid, the same vector everywhere
    with pytest.warns(UserWarning, match="bilinear"):
        resized, _ = loss_fn.align(tokens, [coarse])
    same, _ = loss_fn.align(tokens, [coarse[:, :1].expand(2, 16, 48)])
    torch.testing.assert_close(resized, same)


def test_bad_inputs_fail_clearly():
    loss_fn = REPALoss(PixelPatches(), hidden_size=32, encoder_depth=1, projector_dim=16)
    with pytest.raises(ValueError, match="square token grids.*backbone gave 12"):
        loss_fn.align(torch.randn(1, 12, 32), [torch.randn(1, 16, 48)])
    with pytest.raises(ValueError, match=r"tokens \(B, N, 32\), got \(1, 16, 24\)"):
        loss_fn.align(torch.randn(1, 16, 24), [torch.randn(1, 16, 48)])
    with pytest.raises(ValueError, match="1 target encoders but got 2"):
        loss_fn.align(torch.randn(1, 16, 32), [torch.randn(1, 16, 48)] * 2)
    with pytest.raises(TypeError, match="rae Encoders"):
        REPALoss([torch.nn.Linear(2, 2)], hidden_size=32)
    with pytest.raises(ValueError, match="encoder_depth counts backbone blocks from 1"):
        REPALoss(PixelPatches(), hidden_size=32, encoder_depth=0)


@pytest.mark.parametrize("name, depth", [("sit", 1), ("lightningdit", 2), ("ditdh", 1), ("ditdh", 3)])
def test_aligns_every_backbone_that_exposes_tokens(name, depth):
    """SiT, LightningDiT and DiT-DH (body and head tokens) on 4x4 token grids against 4x4 pixel patches."""
    torch.manual_seed(0)
    kwargs = dict(hidden_size=32, depth=2, num_heads=2, num_classes=10)
    backbone = perturbed({
        "sit": lambda: SiT(input_size=8, **kwargs),
        "lightningdit": lambda: LightningDiT(input_size=4, in_channels=8, **kwargs),
        "ditdh": lambda: DiTDH(input_size=4, in_channels=8, head_hidden_size=48, head_depth=1, head_num_heads=2,
                               **kwargs),
    }[name]())
    loss_fn = REPALoss(PixelPatches(), hidden_size=backbone.token_width(depth), encoder_depth=depth, projector_dim=16)
    x, t, y, images = batch(2, backbone.input_size, backbone.in_channels)
    out, tokens = backbone(x, t, y, return_tokens_at=loss_fn.encoder_depth)
    loss, metrics = loss_fn(tokens, images)
    loss.backward()
    assert out.shape == x.shape and -1 <= metrics["align_loss"] <= 1
    grads = [p.grad for p in backbone.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0
    assert loss_fn.projectors[0][0].weight.grad.abs().sum() > 0


def test_check_backbone_names_the_fix():
    backbone = tiny_sit(depth=3)
    REPALoss(PixelPatches(), hidden_size=32, encoder_depth=3, projector_dim=16).check_backbone(backbone)
    with pytest.raises(ValueError, match="encoder_depth = 4, but SiT has blocks 1..3"):
        REPALoss(PixelPatches(), hidden_size=32, encoder_depth=4, projector_dim=16).check_backbone(backbone)
    with pytest.raises(ValueError, match="set repa.hidden_size = 32"):
        REPALoss(PixelPatches(), hidden_size=64, encoder_depth=2, projector_dim=16).check_backbone(backbone)


def _parse(*files: str, bindings: tuple[str, ...] = ()) -> None:
    gin.clear_config()
    gin.add_config_file_search_path(str(ROOT / "gin"))
    gin.parse_config_files_and_bindings([str(ROOT / f) for f in files], list(bindings))


def test_gin_fragments_build_repa_settings_on_meta():
    """REPA's ImageNet 256 px setting: DINOv2-B (no registers) target, depth 8, coefficient 0.5, width 2048."""
    import rae.transport  # noqa: F401  (registers @loss.transport, @path.*, @time_schedule.*)
    import rae.vae  # noqa: F401  (registers @autoencoder.sd_vae)

    try:
        _parse("gin/repa/sit_xl_2.gin", "gin/repa/alignment_dinov2_b.gin", "gin/repa/transport_linear.gin",
               "gin/repa/sd_vae.gin", bindings=("repa.hidden_size = 1152",))
        with torch.device("meta"):
            loss_fn = gin.get_configurable("loss.repa")()
            backbone = gin.get_configurable("backbone.sit")()
        transport = gin.get_configurable("loss.transport")()
        assert gin.query_parameter("autoencoder.sd_vae.scaling_factor") == 0.18215
    finally:
        gin.clear_config()
    encoder = loss_fn.encoders[0]
    assert (encoder.hidden_size, encoder.input_size, encoder.num_prefix_tokens) == (768, 224, 1)
    assert (loss_fn.encoder_depth, loss_fn.proj_coeff) == (8, 0.5)
    assert [m.weight.shape for m in loss_fn.projectors[0] if hasattr(m, "weight")] == [
        (2048, 1152), (2048, 2048), (768, 2048)]
    assert (backbone.hidden_size, len(backbone.blocks), backbone.patch_size, backbone.grid_size) == (1152, 28, 2, 16)
    loss_fn.check_backbone(backbone)
    assert type(transport.path).__name__ == "LinearPath" and transport.prediction == "velocity"
    assert type(transport.time_schedule).__name__ == "Uniform"


@pytest.mark.parametrize("fragment", sorted(p.name for p in (ROOT / "gin" / "repa").glob("*.gin")))
def test_every_gin_fragment_parses(fragment):
    import rae.sampling  # noqa: F401
    import rae.transport  # noqa: F401
    import rae.vae  # noqa: F401

    try:
        _parse(f"gin/repa/{fragment}")
        if fragment.startswith("transport"):
            transport = gin.get_configurable("loss.transport")()
            assert transport.prediction == "velocity" and transport.shift((4, 32, 32)) == 1.0  # REPA: no shift
            assert transport.truncate_at == 1.0  # REPA's loss.py: torch.rand on [0, 1), no bound like RAE's 0.999
            if "lognormal" in fragment:  # REPA's lognormal weighting: sigma = exp(z), z ~ N(0, 1)
                assert (transport.time_schedule.mean, transport.time_schedule.std) == (0.0, 1.0)
        if fragment.startswith("ode_euler"):  # REPA's 50 steps are 51 grid points
            assert gin.get_configurable("sampler.euler")().grid((4, 32, 32)).tolist()[:2] == [1.0, 0.98]
    finally:
        gin.clear_config()


@pytest.mark.parametrize("config", ["repa_tiny", "repa_sit_xl", "repa_ditdh_xl"])
def test_experiment_configs_dry_run(config, tmp_path, capsys):
    from rae.plugins import import_builtin
    from rae.runner import main

    import_builtin()
    if "stage2" not in EXPERIMENTS:
        pytest.skip("experiments/repa_*.gin run @experiment.stage2, which is not registered yet")
    if config == "repa_sit_xl":
        pytest.importorskip("diffusers", reason="the SD VAE needs the optional extra rae[vae]")
    images = tmp_path / "images" / "n0"
    images.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(images / "a.png")
    bindings = [f"run.run_root = '{tmp_path / 'runs'}'"]
    if config != "repa_tiny":
        bindings.append(f"image_folder.root = '{images.parent}'")
    rc = main(["--gin", str(ROOT / "experiments" / f"{config}.gin"), "--dry_run",
               *[arg for binding in bindings for arg in ("--gin_param", binding)]])
    out = capsys.readouterr().out
    assert rc == 0, out
    if config == "repa_sit_xl":  # as released: fp16 mixed precision, a fresh posterior sample every step
        for line in ("run.precision = 'fp16'", "stage2.stochastic_encode = True", "sd_vae.sample_posterior = True",
                     "stage2.autocast_encode = False", "sd_vae.scaling_factor = 0.18215"):
            assert line in out, line
    if config == "repa_ditdh_xl":  # RAE's released stage-2 recipe
        assert "optim.warmup_mode = 'constant'" in out and "run.precision = 'fp32'" in out
