"""Stage-1 losses: LPIPS, the DINO discriminator and its heads, DiffAugment, GAN losses, adaptive weight."""
from __future__ import annotations

import logging
import math

import huggingface_hub
import pytest
import torch
from safetensors.torch import save_file
from torch.nn import functional as F

from rae.losses import (
    LPIPS, DiffAugment, DinoDiscriminator, adaptive_gan_weight, hinge_d_loss, quantize_8bit, vanilla_d_loss,
    vanilla_g_loss,
)
from rae.losses.disc_heads import LocalBatchNorm
from rae.losses.perceptual import LINEAR_HEADS
from rae.registry import LOSSES
from rae.weights import WeightsNotFound

LOG = logging.getLogger("test")


@pytest.fixture(autouse=True)
def empty_weight_caches(tmp_path, monkeypatch):
    """No cached VGG / DINO weights, whatever this machine holds."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))


@pytest.fixture(scope="module")
def lpips_random(tmp_path_factory) -> LPIPS:
    metric = LPIPS(vgg_weights=str(tmp_path_factory.mktemp("none") / "absent.pth"))
    metric.load_pretrained(allow_random=True, log=LOG)
    return metric


@pytest.fixture(scope="module")
def disc() -> DinoDiscriminator:
    torch.manual_seed(0)
    return DinoDiscriminator(input_size=32)  # ViT-S/8 at 32 px: 16 tokens per map


def test_stage1_losses_are_registered():
    assert {"lpips", "dino_disc", "diffaug", "hinge_d", "vanilla_d", "vanilla_g"} <= set(LOSSES.names())


# ---- LPIPS ----
def test_lpips_refuses_without_vgg_weights():
    with pytest.raises(WeightsNotFound, match="LPIPS VGG16 trunk: tried .*vgg16-397923af.pth"):
        LPIPS().load_pretrained(allow_random=False, log=LOG)


def test_lpips_with_random_trunk_measures_unit_images(lpips_random):
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    direct = lpips_random.metric(x * 2 - 1, y * 2 - 1).flatten()  # the package's own [-1, 1] convention
    distance = lpips_random(x, y)
    torch.testing.assert_close(distance, direct)
    assert distance.shape == (2,) and (distance > 0).all()
    assert lpips_random(x, x).abs().max() < 1e-6
    shipped = torch.load(LINEAR_HEADS, map_location="cpu", weights_only=True)
    assert torch.equal(lpips_random.metric.lin2.model[1].weight, shipped["lin2.model.1.weight"])


def test_lpips_is_frozen_but_passes_gradients(lpips_random):
    assert not lpips_random.train().training and not any(p.requires_grad for p in lpips_random.parameters())
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    lpips_random(x, torch.rand(1, 3, 32, 32)).sum().backward()
    assert x.grad.abs().sum() > 0


def test_lpips_loads_a_torchvision_vgg16_file(tmp_path):
    trunk = LPIPS().metric.net.state_dict()  # keys slice{k}.{i}.*, i = torchvision's features index
    features = {f"features.{k.split('.', 1)[1]}": torch.randn_like(v) for k, v in trunk.items()}
    torch.save({**features, "classifier.6.bias": torch.zeros(1000)}, tmp_path / "vgg16.pth")
    metric = LPIPS(vgg_weights=str(tmp_path / "vgg16.pth"))
    metric.load_pretrained(allow_random=False, log=LOG)
    assert torch.equal(metric.metric.net.slice4.get_submodule("21").weight, features["features.21.weight"])
    assert torch.equal(metric.metric.net.slice1.get_submodule("0").bias, features["features.0.bias"])


# ---- discriminator ----
def test_discriminator_heads_train_while_the_backbone_is_frozen(disc):
    disc.train().requires_grad_(False).requires_grad_(True)
    assert not disc.backbone.training and all(h.training for h in disc.heads)
    assert not any(p.requires_grad for p in disc.backbone.parameters())
    assert all(p.requires_grad for p in disc.heads.parameters())
    # biases right before a normalisation, and the out bias under a balanced hinge, get ~zero gradient
    heads = [p for name, p in disc.heads.named_parameters() if not name.endswith("bias")]
    backbone_before = [p.clone() for p in disc.backbone.parameters()]
    heads_before = [p.detach().clone() for p in heads]
    optimizer = torch.optim.SGD(heads, lr=0.1)
    real, fake = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32, requires_grad=True)
    logits_real, logits_fake = disc(real), disc(fake)
    assert logits_real.shape == (2, 5 * 16)
    hinge_d_loss(logits_real, logits_fake).backward()
    assert all(p.grad is None for p in disc.backbone.parameters())
    assert fake.grad.abs().sum() > 0
    assert all(p.grad.abs().sum() > 0 for p in heads)
    optimizer.step()
    assert all(not torch.equal(a, b.detach()) for a, b in zip(heads_before, heads))
    assert all(torch.equal(a, b) for a, b in zip(backbone_before, disc.backbone.parameters()))


def test_discriminator_taps_the_final_and_key_block_tokens(disc):
    images = torch.rand(2, 3, 32, 32)
    vit = disc.backbone
    x = (images - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        x = vit._pos_embed(vit.patch_embed(x))
        after = []
        for block in vit.blocks:
            x = block(x)
            after.append(x[:, 1:].transpose(1, 2))
        maps = disc.token_maps(images)
    assert disc.taps == (11, 2, 5, 8, 11)
    for tap, token_map in zip(disc.taps, maps):
        torch.testing.assert_close(token_map, after[tap], atol=1e-5, rtol=1e-4)


def test_discriminator_trunk_uses_the_tanh_gelu_as_released(disc):
    assert all(type(block.mlp.act) is torch.nn.GELU and block.mlp.act.approximate == "tanh"
               for block in disc.backbone.blocks)
    x = torch.randn(64)
    torch.testing.assert_close(disc.backbone.blocks[0].mlp.act(x), F.gelu(x, approximate="tanh"), rtol=0, atol=0)
    exact = DinoDiscriminator(input_size=32, gelu="none")
    exact.load_state_dict(disc.state_dict())
    assert all(block.mlp.act.approximate == "none" for block in exact.backbone.blocks)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        tanh_maps, exact_maps = disc.token_maps(images), exact.token_maps(images)
    assert all(not torch.allclose(a, b, atol=1e-6) for a, b in zip(tanh_maps, exact_maps))
    with pytest.raises(ValueError, match="dino_disc.gelu must be one of"):
        DinoDiscriminator(input_size=32, gelu="exact")


def test_discriminator_refuses_without_weights_and_loads_a_local_file(disc, tmp_path, caplog):
    with pytest.raises(WeightsNotFound, match="DINO discriminator backbone: tried .*dino_deitsmall8_pretrain.pth"):
        disc.load_pretrained(allow_random=False, log=LOG)
    with caplog.at_level(logging.WARNING):
        disc.load_pretrained(allow_random=True, log=LOG)
    assert "RANDOM WEIGHTS for the DINO discriminator backbone" in caplog.text
    state = {k: torch.randn_like(v) for k, v in disc.backbone.state_dict().items()}
    save_file(state, str(tmp_path / "dino.safetensors"))
    other = DinoDiscriminator(weights=str(tmp_path / "dino.safetensors"), input_size=32)
    other.load_pretrained(allow_random=False, log=LOG)
    assert torch.equal(other.backbone.blocks[7].attn.qkv.weight, state["blocks.7.attn.qkv.weight"])


def test_release_size_discriminator_builds_on_meta():
    with torch.device("meta"):
        full = DinoDiscriminator()
    assert full.backbone.patch_embed.proj.kernel_size == (8, 8) and full.backbone.pos_embed.shape[1] == 785
    assert sum(p.numel() for p in full.backbone.parameters()) == 21_670_272
    per_head = 384 * 384 + 384 + 2 * 384 + 9 * 384 * 384 + 384 + 2 * 384 + 384 + 1  # k=1, k=9 blocks, out conv
    assert sum(p.numel() for p in full.heads.parameters()) == 5 * per_head
    assert full.heads[0].residual.fn[0].kernel_size == (9,)


def test_local_batch_norm_normalises_each_sample_over_tokens():
    norm = LocalBatchNorm(4, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
        norm.bias.copy_(torch.tensor([0.0, 1.0, 0.0, -1.0]))
    x = torch.randn(3, 4, 10) * 5 + 2
    expected = F.instance_norm(x, weight=norm.weight, bias=norm.bias, eps=1e-6)
    torch.testing.assert_close(norm(x), expected, atol=1e-5, rtol=1e-5)


# ---- DiffAugment ----
def test_diffaugment_is_the_identity_at_prob_zero():
    images = torch.rand(2, 3, 16, 16)
    assert torch.equal(DiffAugment(prob=0.0, cutout=0.5)(images), images)


def test_diffaugment_keeps_shape_and_gradients():
    images = torch.rand(4, 3, 16, 16, requires_grad=True)
    out = DiffAugment(prob=1.0, cutout=0.25)(images, generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    out.sum().backward()
    assert images.grad.abs().sum() > 0


def test_translation_shifts_each_image_by_at_most_an_eighth():
    images = torch.arange(4 * 16 * 16, dtype=torch.float32).view(4, 1, 16, 16) / 1024 + 0.01
    out = DiffAugment(translation=0.125, color=False)(images, generator=torch.Generator().manual_seed(1))
    for src, dst in zip(images[:, 0], out[:, 0]):
        shifts = [
            (dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
            if torch.allclose(dst, _shifted(src, dy, dx, fill=0.5), atol=1e-6)
        ]
        assert len(shifts) == 1


def test_cutout_grays_one_clipped_rectangle():
    images = torch.ones(8, 3, 16, 16)
    out = DiffAugment(translation=0.0, color=False, cutout=0.25)(images, generator=torch.Generator().manual_seed(2))
    for sample in out:
        assert torch.equal(sample[0], sample[2])
        hole = sample[0] == 0.5
        assert torch.equal(hole | (sample[0] == 1.0), torch.ones_like(hole))
        rows, cols = hole.any(dim=1).nonzero().flatten(), hole.any(dim=0).nonzero().flatten()
        assert 1 <= len(rows) <= 4 and 1 <= len(cols) <= 4 and hole.sum() == len(rows) * len(cols)


def test_color_on_a_gray_image_only_moves_brightness():
    images = torch.full((16, 3, 8, 8), 0.5)
    out = DiffAugment(translation=0.0)(images, generator=torch.Generator().manual_seed(3))
    flat = out.flatten(1)
    assert torch.allclose(flat, flat[:, :1].expand_as(flat), atol=1e-6)
    assert flat.min() >= 0.25 and flat.max() <= 0.75 and flat[:, 0].std() > 0.05


def _shifted(image: torch.Tensor, dy: int, dx: int, fill: float) -> torch.Tensor:
    """out[i, j] = image[i + dy, j + dx], ``fill`` outside (by explicit loops)."""
    h, w = image.shape
    out = torch.full_like(image, fill)
    for i in range(h):
        for j in range(w):
            if 0 <= i + dy < h and 0 <= j + dx < w:
                out[i, j] = image[i + dy, j + dx]
    return out


# ---- GAN objectives ----
def test_gan_losses_against_hand_computations():
    real, fake = torch.tensor([[2.0, 0.5], [-1.0, 1.0]]), torch.tensor([[-2.0, 0.0], [0.5, -0.5]])
    # hinge: relu(1 - real) = [0, .5, 2, 0] -> mean .625; relu(1 + fake) = [0, 1, 1.5, .5] -> mean .75
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (0.625 + 0.75))
    soft = lambda t: math.log1p(math.exp(t))  # noqa: E731
    expected = 0.5 * (sum(soft(-r) for r in [2, 0.5, -1, 1]) / 4 + sum(soft(f) for f in [-2, 0, 0.5, -0.5]) / 4)
    assert vanilla_d_loss(real, fake).item() == pytest.approx(expected)
    assert vanilla_g_loss(fake).item() == pytest.approx(0.5)
    # 0.1 is one of the rare inputs where float rounding decides: RAE's arithmetic gives level 25
    assert torch.equal(quantize_8bit(torch.tensor([-0.2, 0.5, 1.3, 0.1])),
                       torch.tensor([0.0, 128 / 255, 1.0, 25 / 255]))


def test_quantize_8bit_rounds_to_the_releases_levels():
    x = torch.cat([torch.rand(100_000) * 1.2 - 0.1, torch.tensor([100.6 / 255, 100.4 / 255, 0.1])])
    release = torch.round(((x * 2.0 - 1.0).clamp(-1.0, 1.0) + 1.0) * 127.5) / 127.5 - 1.0  # RAE, on [-1, 1]
    levels = quantize_8bit(x) * 255.0
    assert torch.equal(levels, levels.round()) and levels.min() == 0 and levels.max() == 255
    assert torch.equal(levels.round(), ((release + 1.0) * 127.5).round())
    assert levels[-3:].tolist() == [101.0, 100.0, 25.0]  # rounded, not truncated


def test_adaptive_weight_is_the_ratio_of_gradient_norms_at_the_last_layer():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(3, 4))
    x, target, a = torch.randn(5, 4), torch.randn(5, 3), torch.randn(3)
    out = x @ w.T
    rec = ((out - target) ** 2).sum()
    gan = -(out @ a).mean()
    rec_grad = 2 * (out - target).T @ x  # d rec / d w, by hand
    gan_grad = -a[:, None] * x.mean(0)[None, :]  # d gan / d w, by hand
    expected = rec_grad.norm() / (gan_grad.norm() + 1e-6)
    weight = adaptive_gan_weight(rec, gan, w)
    torch.testing.assert_close(weight, expected.detach())
    assert not weight.requires_grad and weight.dtype == torch.float32
    assert adaptive_gan_weight(rec, gan, w, cap=0.5).item() == 0.5 < expected.item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(adaptive_gan_weight(rec, gan, w), expected.detach())
    (rec + weight * gan).backward()  # the graph is still there for the generator step
    assert w.grad is not None
