"""Guidance rules: classifier-free guidance with an interval, autoguidance with a guide model, gin fragments."""
import logging
import math
from pathlib import Path

import gin
import pytest
import torch
from torch import nn

from rae.backbones import DiTDH
from rae.registry import GUIDANCE, SAMPLERS
from rae.sampling import Autoguidance, ClassifierFreeGuidance, NoGuidance, ODESampler, SDESampler
from rae.transport import Transport
from rae.weights import WeightsNotFound

ROOT = Path(__file__).resolve().parent.parent
NUM_CLASSES = 5
LOG = logging.getLogger("test")


class Recorder(nn.Module):
    """A label- and time-dependent toy model that records the batches it sees."""

    def __init__(self, offset: float = 0.0) -> None:
        super().__init__()
        self.offset = offset
        self.seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.eval()

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.seen.append((x, t, y))
        return torch.sin(x) * (1 + y[:, None].float()) + t[:, None] * x + self.offset


def batch(t: list[float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(len(t), 6, generator=gen), torch.tensor(t), torch.arange(len(t)) % NUM_CLASSES


# ---- classifier-free guidance ----

def test_cfg_mixes_conditional_and_null_halves_of_one_batch():
    model = Recorder()
    x, t, y = batch([0.9, 0.5, 0.2])
    v = ClassifierFreeGuidance(scale=2.5).velocity_fn(model, num_classes=NUM_CLASSES)(x, t, y)
    assert len(model.seen) == 1  # one forward of 2B samples
    bx, bt, by = model.seen[0]
    assert torch.equal(bx, torch.cat([x, x])) and torch.equal(bt, torch.cat([t, t]))
    assert torch.equal(by, torch.cat([y, torch.full_like(y, NUM_CLASSES)]))
    cond = torch.sin(x) * (1 + y[:, None]) + t[:, None] * x
    uncond = torch.sin(x) * (1 + NUM_CLASSES) + t[:, None] * x
    assert torch.allclose(v, uncond + 2.5 * (cond - uncond), atol=1e-6)


def test_cfg_interval_is_inclusive_and_per_sample():
    model = Recorder()
    x, t, y = batch([1.0, 0.7, 0.6999, 0.3, 0.2999])
    v = ClassifierFreeGuidance(scale=3.0, t_min=0.3, t_max=0.7).velocity_fn(model, num_classes=NUM_CLASSES)(x, t, y)
    cond = model(x, t, y)
    guided = torch.tensor([False, True, True, True, False])
    assert torch.allclose(v[~guided], cond[~guided], atol=1e-6)
    assert not torch.isclose(v[guided], cond[guided], atol=1e-3).any()


def test_cfg_outside_the_interval_runs_only_the_conditional_half():
    model = Recorder()
    x, t, y = batch([0.95, 0.9])
    v = ClassifierFreeGuidance(scale=3.0, t_max=0.7).velocity_fn(model, num_classes=NUM_CLASSES)(x, t, y)
    assert [s[0].shape[0] for s in model.seen] == [2]
    assert torch.allclose(v, model(x, t, y))


def test_cfg_falls_back_on_the_backbone_null_label_and_checks_its_inputs():
    backbone = DiTDH(hidden_size=16, depth=1, num_heads=2, head_hidden_size=16, head_depth=1, head_num_heads=2,
                     input_size=2, in_channels=4, num_classes=7).eval()
    seen = []
    backbone.register_forward_pre_hook(lambda module, args: seen.append(args[2]))
    x, t, y = torch.randn(2, 4, 2, 2), torch.tensor([0.5, 0.5]), torch.tensor([1, 2])
    ClassifierFreeGuidance(scale=2.0).velocity_fn(backbone)(x, t, y)
    assert seen[0].tolist() == [1, 2, 7, 7]
    with pytest.raises(ValueError, match="needs the null label"):
        ClassifierFreeGuidance(scale=2.0).velocity_fn(Recorder())
    with pytest.raises(ValueError, match="needs class labels y"):
        ClassifierFreeGuidance(scale=2.0).velocity_fn(Recorder(), num_classes=5)(x, t, None)
    with pytest.raises(ValueError, match="training mode"):
        NoGuidance().velocity_fn(backbone.train())
    with pytest.raises(ValueError, match="0 <= t_min <= t_max <= 1"):
        ClassifierFreeGuidance(scale=2.0, t_min=0.8, t_max=0.2)


def test_mixing_predictions_equals_mixing_velocities():
    """Guidance mixes velocities; for a noise-predicting model that equals mixing the noise predictions."""
    transport = Transport(prediction="noise")
    model = Recorder()
    x, t, y = batch([0.8, 0.5, 0.3])
    v = ClassifierFreeGuidance(scale=1.7).velocity_fn(model, to_velocity=transport.velocity,
                                                       num_classes=NUM_CLASSES)(x, t, y)
    cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, NUM_CLASSES))
    assert torch.allclose(v, transport.velocity(uncond + 1.7 * (cond - uncond), x, t), atol=1e-5)


# ---- autoguidance ----

def test_autoguidance_pulls_away_from_the_guide_inside_its_interval():
    main, guide = Recorder(), Recorder(offset=0.5)
    rule = Autoguidance(guide, scale=1.42, t_min=0.0, t_max=0.6)
    x, t, y = batch([1.0, 0.6, 0.2])
    v = rule.velocity_fn(main)(x, t, y)
    v_main, v_guide = main(x, t, y), guide(x, t, y)
    assert torch.equal(guide.seen[0][2], y)  # the guide is conditional on the same labels
    inside = v_guide + 1.42 * (v_main - v_guide)
    assert torch.allclose(v[1:], inside[1:], atol=1e-6)
    assert torch.allclose(v[:1], v_main[:1], atol=1e-6)


def test_autoguidance_with_scale_one_never_calls_the_guide():
    guide = Recorder(offset=0.5)
    x, t, y = batch([0.5])
    Autoguidance(guide, scale=1.0).velocity_fn(Recorder())(x, t, y)
    assert guide.seen == []


def tiny_ditdh() -> DiTDH:
    return DiTDH(hidden_size=16, depth=1, num_heads=2, head_hidden_size=16, head_depth=1, head_num_heads=2,
                 input_size=2, in_channels=4, num_classes=3)


def test_autoguidance_loads_the_guide_checkpoint_with_the_weights(tmp_path, caplog):
    source = tiny_ditdh()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)
    torch.save({"ema": source.state_dict()}, tmp_path / "guide.pt")
    rule = Autoguidance(tiny_ditdh(), checkpoint=str(tmp_path / "guide.pt"), scale=1.5)
    rule.load_pretrained(allow_random=False, log=LOG)
    assert all(torch.equal(a, b) for a, b in zip(rule.guide.state_dict().values(), source.state_dict().values()))

    missing = Autoguidance(tiny_ditdh(), checkpoint=str(tmp_path / "absent.pt"))
    with pytest.raises(WeightsNotFound, match="autoguidance guide.*absent.pt.*autoguidance.checkpoint"):
        missing.load_pretrained(allow_random=False, log=LOG)
    with caplog.at_level(logging.WARNING):
        missing.load_pretrained(allow_random=True, log=LOG)
    assert "RANDOM WEIGHTS for the autoguidance guide" in caplog.text


# ---- gin fragments ----

def parse(*lines: str) -> None:
    gin.parse_config("\n".join(lines))


def test_autoguidance_fragment_is_the_papers_with_a_dit_dh_s_guide(clean_gin):
    parse("include 'backbones/ditdh_xl.gin'", "include 'guidance/autoguidance.gin'")
    with pytest.raises(ValueError, match="autoguidance.checkpoint set to `%gin.REQUIRED`"):
        gin.finalize()
    gin.bind_parameter("autoguidance.checkpoint", "/ckpt/guide.pt")
    gin.finalize()
    with torch.device("meta"):
        rule = gin.query_parameter("%GUIDANCE").scoped_configurable_fn()
        main = gin.get_configurable("backbone.ditdh")()
    assert isinstance(rule, Autoguidance)
    assert (rule.scale, rule.t_min, rule.t_max, rule.checkpoint) == (1.42, 0.0, 1.0, "/ckpt/guide.pt")
    assert sum(p.numel() for p in rule.guide.parameters()) == 196_455_764  # DiT-DH-S (docs/paper_configs.md)
    assert sum(p.numel() for p in main.parameters()) == 838_675_796  # the main model stays XL


def test_guidance_fragments_build(clean_gin):
    parse("include 'guidance/none.gin'")
    assert isinstance(gin.query_parameter("%GUIDANCE").scoped_configurable_fn(), NoGuidance)
    gin.clear_config()
    parse("include 'guidance/cfg.gin'")
    cfg = gin.query_parameter("%GUIDANCE").scoped_configurable_fn()
    assert isinstance(cfg, ClassifierFreeGuidance)
    assert (cfg.scale, cfg.t_min, cfg.t_max) == (1.8, 0.0, 0.7)  # REPA's SiT-XL/2 setting


def test_sampler_fragments_carry_the_paper_values(clean_gin):
    parse("include 'samplers/ode_euler_50.gin'")
    euler = gin.query_parameter("%SAMPLER").scoped_configurable_fn()
    assert isinstance(euler, ODESampler)
    assert (euler.method, euler.num_steps, euler.shift, euler.end) == ("euler", 50, "auto", 1e-3)
    s, u = math.sqrt(48), 1 - (1 - 1e-3) / 49  # shift for 768 x 16 x 16; second point of the grid to 1e-3
    assert math.isclose(euler.grid((768, 16, 16))[1].item(), s * u / (1 + (s - 1) * u))
    gin.clear_config()
    parse("include 'samplers/ode_dopri5.gin'")
    dopri = gin.query_parameter("%SAMPLER").scoped_configurable_fn()
    assert (dopri.method, dopri.atol, dopri.rtol) == ("dopri5", 1e-6, 1e-3)
    gin.clear_config()
    parse("include 'samplers/sde_250.gin'")
    sde = gin.query_parameter("%SAMPLER").scoped_configurable_fn()
    assert isinstance(sde, SDESampler)
    assert (sde.num_steps, sde.diffusion_form, sde.last_step, sde.last_step_size) == (250, "linear", "mean", 0.04)


def test_guidance_rules_are_registered():
    assert set(GUIDANCE.names()) >= {"none", "cfg", "autoguidance"}
    assert set(SAMPLERS.names()) >= {"ode", "sde", "euler", "heun"}
