"""Golden parity: RAE's ODE sampler with the DiT-DH golden model, plain, with CFG and with autoguidance.

``sampler_ode.pt`` pins the reference sampler's outputs for ``ditdh.pt``'s model; it is
reproduced through our loader (reference config and key names), samplers and guidance.
The reference grid is 1 - linspace(0, 1 - 1e-3, num_steps) before the shift (it stops
at shift(1e-3), not at 0); ``end=1e-3`` reproduces that.
"""
import logging
from pathlib import Path

import pytest
import torch

from rae.backbones import from_reference_config, load_release_state
from rae.sampling import Autoguidance, ClassifierFreeGuidance, EulerSampler, HeunSampler, NoGuidance, ODESampler
from rae.transport.paths import GVPPath, LinearPath, VPPath
from rae.transport.transport import Transport

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
ATOL = 1e-4


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN / "sampler_ode.pt", weights_only=True)


# The reference's names for its paths and its solvers -> ours; the golden file's config picks them.
PATHS = {"Linear": LinearPath, "GVP": GVPPath, "VP": VPPath}
FIXED_STEP = {"euler": EulerSampler, "heun": HeunSampler}


def reference_kind(golden) -> str:
    """The model's reference class: the golden file names its model file (ditdh.pt, lightningdit.pt)."""
    return Path(golden["model"]).stem


@pytest.fixture(scope="module")
def model(golden):
    reference = torch.load(GOLDEN / golden["model"], weights_only=True)
    built = from_reference_config(reference_kind(golden), reference["config"])
    return load_release_state(built, reference["state_dict"]).eval()


@pytest.fixture(scope="module")
def guide(golden):
    built = from_reference_config(reference_kind(golden), golden["guide_config"])
    return load_release_state(built, golden["guide_state_dict"]).eval()


@pytest.fixture(scope="module")
def transport(golden):
    cfg = golden["config"]
    return Transport(path=PATHS[cfg["path_type"]](), prediction=cfg["prediction"])


def samplers(golden):
    """Every sampler of ours that implements the reference's method: torchdiffeq's, and our own fixed step."""
    cfg = golden["config"]
    common = dict(num_steps=cfg["num_steps"], shift=cfg["time_dist_shift"], end=1e-3)
    method = cfg["sampling_method"]
    ours = [FIXED_STEP[method](**common)] if method in FIXED_STEP else []
    tolerances = {k: cfg[k] for k in ("atol", "rtol") if k in cfg}
    return [ODESampler(method=method, **common, **tolerances), *ours]


def sample(golden, sampler, velocity) -> torch.Tensor:
    with torch.no_grad():
        return sampler.sample(velocity, golden["inputs"]["noise"], golden["inputs"]["y"])


def test_the_reference_settings_are_read_from_the_fixture(golden):
    """Every sampler built from the config runs the configured method on the configured grid."""
    cfg = golden["config"]
    for sampler in samplers(golden):
        assert sampler.num_steps == cfg["num_steps"] and sampler.shift == cfg["time_dist_shift"]


def test_plain_sampling_matches(golden, model, transport):
    for sampler in samplers(golden):
        out = sample(golden, sampler, NoGuidance().velocity_fn(model, to_velocity=transport.velocity))
        assert torch.allclose(out, golden["outputs"]["plain"], atol=ATOL), type(sampler).__name__


def test_grid_to_zero_is_measurably_different(golden, model, transport):
    """The 1e-3 end point matters at this tolerance: the check can fail."""
    cfg = golden["config"]
    out = sample(golden, EulerSampler(num_steps=cfg["num_steps"], shift=cfg["time_dist_shift"]),
                 NoGuidance().velocity_fn(model, to_velocity=transport.velocity))
    assert not torch.allclose(out, golden["outputs"]["plain"], atol=ATOL)


def test_cfg_with_interval_matches(golden, model, transport):
    g = golden["guidance"]
    rule = ClassifierFreeGuidance(scale=g["cfg_scale"], t_min=g["cfg_interval"][0], t_max=g["cfg_interval"][1])
    for sampler in samplers(golden):
        out = sample(golden, sampler, rule.velocity_fn(model, to_velocity=transport.velocity,
                                                       num_classes=golden["guide_config"]["num_classes"]))
        assert torch.allclose(out, golden["outputs"]["cfg"], atol=ATOL), type(sampler).__name__
    assert not torch.allclose(golden["outputs"]["cfg"], golden["outputs"]["plain"], atol=ATOL)


def test_autoguidance_matches_with_the_guide_loaded_from_a_checkpoint(golden, model, transport, tmp_path):
    g = golden["guidance"]
    torch.save(golden["guide_state_dict"], tmp_path / "guide.pt")
    guide = from_reference_config(reference_kind(golden), golden["guide_config"])
    rule = Autoguidance(guide, checkpoint=str(tmp_path / "guide.pt"), scale=g["ag_scale"],
                        t_min=g["ag_interval"][0], t_max=g["ag_interval"][1])
    rule.load_pretrained(allow_random=False, log=logging.getLogger("test"))
    rule.eval()
    for sampler in samplers(golden):
        out = sample(golden, sampler, rule.velocity_fn(model, to_velocity=transport.velocity))
        assert torch.allclose(out, golden["outputs"]["autoguidance"], atol=ATOL), type(sampler).__name__


def test_autoguidance_interval_includes_t_equal_one(golden, model, guide, transport):
    """The reference guides at t = 1 (the first step): an interval ending just below 1 misses it."""
    g = golden["guidance"]
    rule = Autoguidance(guide, scale=g["ag_scale"], t_min=0.0, t_max=0.999)
    out = sample(golden, samplers(golden)[-1], rule.velocity_fn(model, to_velocity=transport.velocity))
    assert not torch.allclose(out, golden["outputs"]["autoguidance"], atol=ATOL)


@pytest.mark.parametrize("method, expected", [("heun", ["ODESampler", "HeunSampler"]), ("dopri5", ["ODESampler"])])
def test_a_fixture_of_another_solver_builds_that_solver(golden, method, expected):
    other = {**golden, "config": {**golden["config"], "sampling_method": method, "num_steps": 7}}
    built = samplers(other)
    assert [type(s).__name__ for s in built] == expected and all(s.num_steps == 7 for s in built)
    assert built[0].method == method
