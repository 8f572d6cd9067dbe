"""Transport: paths, targets and losses, prediction conversions, time schedules and shift, against formulas."""
import math
from pathlib import Path

import pytest
import torch

import gin
from rae.registry import LOSSES, PATHS, TIME_SCHEDULES
from rae.sampling.time_grid import time_grid
from rae.transport import (
    GVPPath,
    LinearPath,
    LogitNormal,
    Transport,
    Uniform,
    VPPath,
    dimension_shift,
    shift_time,
)
from rae.transport.predictions import PREDICTIONS, convert, target
from rae.transport.schedules import ArctanLogNormal

ROOT = Path(__file__).resolve().parent.parent
F64 = torch.float64


# Closed forms written out here, independently of rae.transport (t = 1 noise, t = 0 data).
def closed_form(name: str, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(alpha, sigma, g) with g the SDE diffusion term (SiT's drift_var)."""
    if name == "linear":
        return 1 - t, t, t / (1 - t)
    if name == "gvp":
        return torch.cos(math.pi * t / 2), torch.sin(math.pi * t / 2), math.pi / 2 * torch.tan(math.pi * t / 2)
    alpha = torch.exp(-0.25 * t**2 * 19.9 - 0.05 * t)  # VP, beta in [0.1, 20]
    return alpha, torch.sqrt(1 - alpha**2), (0.1 + 19.9 * t) / 2


PATH_NAMES = ["linear", "gvp", "vp"]


def batch(seed: int = 0, n: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, 3, 4, 4, generator=gen, dtype=F64)
    noise = torch.randn(n, 3, 4, 4, generator=gen, dtype=F64)
    t = 0.05 + 0.9 * torch.rand(n, generator=gen, dtype=F64)
    return x0, noise, t


def col(t: torch.Tensor) -> torch.Tensor:
    return t.view(-1, 1, 1, 1)


# ---- paths ----

@pytest.mark.parametrize("name", PATH_NAMES)
def test_path_coefficients_match_closed_forms(name):
    path = PATHS.get(name)()
    t = torch.linspace(0.01, 0.99, 50, dtype=F64)
    alpha, sigma, d_alpha, d_sigma = path.coefficients(t)
    ref_alpha, ref_sigma, ref_g = closed_form(name, t)
    assert torch.allclose(alpha, ref_alpha) and torch.allclose(sigma, ref_sigma)
    assert torch.allclose(path.diffusion(t), ref_g)
    h = 1e-6  # derivatives against central differences of the closed forms
    assert torch.allclose(d_alpha, (closed_form(name, t + h)[0] - closed_form(name, t - h)[0]) / (2 * h), atol=1e-6)
    assert torch.allclose(d_sigma, (closed_form(name, t + h)[1] - closed_form(name, t - h)[1]) / (2 * h), atol=1e-6)
    assert torch.allclose(path.d_log_alpha(t), d_alpha / alpha)


def test_linear_path_endpoints_are_data_and_noise():
    x0, noise, _ = batch()
    path = LinearPath()
    assert torch.equal(path.interpolate(x0, noise, torch.zeros(5, dtype=F64)), x0)
    assert torch.equal(path.interpolate(x0, noise, torch.ones(5, dtype=F64)), noise)
    assert torch.equal(path.velocity(x0, noise, torch.rand(5, dtype=F64)), noise - x0)


# ---- targets, losses, conversions ----

def direct_target(prediction: str, name: str, x0, noise, t) -> torch.Tensor:
    alpha, sigma, _ = closed_form(name, col(t))
    h = 1e-6
    if prediction == "velocity":  # d/dt of alpha x0 + sigma eps, by central differences
        a1, s1, _ = closed_form(name, col(t + h))
        a0, s0, _ = closed_form(name, col(t - h))
        return ((a1 - a0) * x0 + (s1 - s0) * noise) / (2 * h)
    return noise if prediction == "noise" else -noise / sigma


@pytest.mark.parametrize("name", PATH_NAMES)
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_targets_and_conversions_of_the_truth(name, prediction):
    path = PATHS.get(name)()
    x0, noise, t = batch()
    alpha, sigma, _ = closed_form(name, col(t))
    x_t = alpha * x0 + sigma * noise
    truth = direct_target(prediction, name, x0, noise, t)
    assert torch.allclose(target(prediction, path, x0, noise, t), truth, atol=1e-6)
    for dest in PREDICTIONS:  # the truth of one kind converts into the truth of every other kind
        assert torch.allclose(convert(truth, prediction, dest, x_t, t, path),
                              direct_target(dest, name, x0, noise, t), atol=1e-5), dest


@pytest.mark.parametrize("name", PATH_NAMES)
def test_conversions_round_trip(name):
    path = PATHS.get(name)()
    _, x_t, t = batch(1)
    out = torch.randn_like(x_t)
    for a in PREDICTIONS:
        for b in PREDICTIONS:
            back = convert(convert(out, a, b, x_t, t, path), b, a, x_t, t, path)
            assert torch.allclose(back, out, atol=1e-8), (a, b)


WEIGHTS = {"none": lambda s, g: torch.ones_like(s), "velocity": lambda s, g: (g / s) ** 2,
           "likelihood": lambda s, g: g / s**2}


@pytest.mark.parametrize("name", PATH_NAMES)
@pytest.mark.parametrize("prediction, weight", [("velocity", "none")] + [
    (p, w) for p in ("noise", "score") for w in WEIGHTS])
def test_loss_equals_direct_computation(name, prediction, weight):
    transport = Transport(PATHS.get(name)(), prediction=prediction, loss_weight=weight)
    x0, noise, t = batch(2)
    out = torch.randn_like(x0)
    point = transport.point(x0, noise, t)
    alpha, sigma, g = closed_form(name, t)
    assert torch.allclose(point.x_t, col(alpha) * x0 + col(sigma) * noise)
    if prediction == "velocity":
        error = out - direct_target("velocity", name, x0, noise, t)
    elif prediction == "noise":
        error = out - noise
    else:  # SiT: the score error is measured as the implied noise, sigma * s + eps
        error = col(sigma) * out + noise
    expected = WEIGHTS[weight](sigma, g) * (error**2).mean(dim=(1, 2, 3))
    assert torch.allclose(transport.loss(out, point).double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", PATH_NAMES)
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_oracle_model_has_zero_training_loss(name, prediction):
    """A model that knows x0 and outputs the exact target from (x_t, t) has zero loss at every draw."""
    transport = Transport(PATHS.get(name)(), prediction=prediction,
                          time_schedule=LogitNormal(), time_shift=3.0)
    x0 = torch.randn(64, 2, 3, 3, dtype=F64)
    seen = {}

    def oracle(x_t, t, y):
        alpha, sigma, _ = closed_form(name, col(t.double()))
        noise = (x_t - alpha * x0) / sigma
        seen["t"], seen["y"] = t, y
        return direct_target(prediction, name, x0, noise, t.double())

    y = torch.arange(64)
    loss = transport.training_loss(oracle, x0, y, torch.Generator().manual_seed(0))
    assert loss.shape == (64,) and loss.max().item() < 1e-6
    assert torch.equal(seen["y"], y)
    assert transport.t_min <= seen["t"].min().item() and seen["t"].max().item() <= transport.t_max


def test_wrong_prediction_has_positive_loss():
    transport = Transport()
    point = transport.draw(torch.randn(8, 2, 3, 3), torch.Generator().manual_seed(0))
    assert (transport.loss(point.noise, point) > 0.1).all()  # noise instead of noise - x0


def test_velocity_for_samplers_from_any_prediction():
    x0, noise, t = batch(3)
    for prediction in PREDICTIONS:
        transport = Transport(GVPPath(), prediction=prediction)
        x_t = transport.path.interpolate(x0, noise, t)
        out = direct_target(prediction, "gvp", x0, noise, t)
        assert torch.allclose(transport.velocity(out, x_t, t), transport.path.velocity(x0, noise, t), atol=1e-5)
    scalar = Transport(prediction="noise")
    x_t = scalar.path.interpolate(x0, noise, torch.tensor(0.5, dtype=F64))
    assert torch.allclose(scalar.velocity(noise, x_t, torch.tensor(0.5, dtype=F64)), noise - x0)


def test_training_intervals_follow_sit():
    assert (Transport().t_min, Transport().t_max) == (0.0, 1.0)
    assert (Transport(prediction="noise").t_min, Transport(prediction="noise").t_max) == (1e-3, 1 - 1e-3)
    assert (Transport(VPPath()).t_min, Transport(VPPath()).t_max) == (1e-5, 1.0)
    assert Transport(prediction="score", train_eps=0.01).t_max == 0.99


def test_draws_are_reproducible_from_the_generator():
    transport = Transport(time_schedule=LogitNormal())
    x0 = torch.randn(4, 2, 2, 2)
    a = transport.draw(x0, torch.Generator().manual_seed(5))
    b = transport.draw(x0, torch.Generator().manual_seed(5))
    c = transport.draw(x0, torch.Generator().manual_seed(6))
    assert torch.equal(a.x_t, b.x_t) and torch.equal(a.t, b.t) and not torch.equal(a.t, c.t)


def test_bad_configurations_fail_clearly():
    with pytest.raises(ValueError, match="unknown prediction 'eps'"):
        Transport(prediction="eps")
    with pytest.raises(ValueError, match="velocity prediction takes 'none'"):
        Transport(loss_weight="likelihood")
    with pytest.raises(ValueError, match="not both"):
        Transport(shift_base_dim=4096, time_shift=2.0)
    with pytest.raises(ValueError, match="unknown loss_weight"):
        Transport(prediction="noise", loss_weight="snr")
    with pytest.raises(ValueError, match="does not match x0"):
        Transport().loss(torch.zeros(2, 3), Transport().draw(torch.zeros(2, 4)))


# ---- time schedules and shift ----

def test_time_shift_formula():
    t = torch.linspace(0, 1, 11, dtype=F64)
    s = 3.0
    assert torch.allclose(shift_time(t, s), s * t / (1 + (s - 1) * t))
    assert torch.equal(shift_time(t, 1.0), t)
    shifted = shift_time(t, s)
    assert shifted[0] == 0 and shifted[-1] == 1 and (shifted[1:-1] > t[1:-1]).all()  # towards noise
    assert shift_time(torch.tensor(0.5), s).item() == pytest.approx(0.75)
    assert dimension_shift(768 * 16 * 16) == pytest.approx(math.sqrt(48))
    assert dimension_shift(768 * 32 * 32) == pytest.approx(math.sqrt(192))


def test_transport_shift_and_sampling_grid():
    transport = Transport(shift_base_dim=4096)
    assert transport.shift((768, 16, 16)) == pytest.approx(math.sqrt(48))
    assert Transport(time_shift=2.0).shift((768, 16, 16)) == 2.0 and Transport().shift((768, 16, 16)) == 1.0
    grid = time_grid(5, Transport(time_shift=2.0).shift((8, 4, 4)))
    plain = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64)
    assert torch.allclose(grid, 2 * plain / (1 + plain))


def normal_cdf(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(z / math.sqrt(2)))


def test_logit_normal_matches_its_analytic_distribution():
    mean, std, n = 0.5, 0.8, 20000
    t = LogitNormal(mean, std).sample(n, torch.Generator().manual_seed(0)).double()
    assert t.dtype == F64 and 0 < t.min() and t.max() < 1
    probs = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=F64)
    analytic = torch.sigmoid(mean + std * math.sqrt(2) * torch.erfinv(2 * probs - 1))
    assert torch.allclose(torch.quantile(t, probs), analytic, atol=0.01)
    ordered = t.sort().values
    cdf = normal_cdf((torch.logit(ordered) - mean) / std)
    ks = (torch.arange(1, n + 1, dtype=F64) / n - cdf).abs().max().item()
    assert ks < 1.63 / math.sqrt(n)  # Kolmogorov-Smirnov at the 1% level


def test_uniform_schedule_and_shifted_training_times():
    n = 20000
    t = Uniform().sample(n, torch.Generator().manual_seed(1)).double().sort().values
    assert (t - torch.arange(1, n + 1, dtype=F64) / n).abs().max().item() < 1.63 / math.sqrt(n)
    # Shifted uniform draws: P(t' <= u) = P(t <= u / (s - (s - 1) u)), the inverse shift.
    transport = Transport(shift_base_dim=4096)
    shifted = transport.sample_time(n, (768, 16, 16), torch.Generator().manual_seed(2)).double()
    s = math.sqrt(48)
    for u in (0.3, 0.6, 0.9):
        assert (shifted <= u).double().mean().item() == pytest.approx(u / (s - (s - 1) * u), abs=0.01)


def released_truncated_logitnormal(n: int, mu: float, sigma: float, high: float, generator) -> torch.Tensor:
    """RAE's transport.py truncated_logitnormal_sample on [0, high], written out: u ~ U(Phi(-inf), Phi(beta)),
    z = mu + sigma Phi^-1(u), t = sigmoid(z) clamped into [0, high]."""
    base = torch.distributions.Normal(0.0, 1.0)
    beta = (math.log(high / (1 - high)) - mu) / sigma
    u = torch.rand(n, generator=generator) * base.cdf(torch.tensor(beta))
    return torch.sigmoid(mu + sigma * base.icdf(u)).clamp(0.0, high)


def test_truncated_draws_are_rae_releases_on_its_training_interval():
    """RAE trains velocity models on t in [0, 1 - 1/1000] (check_interval), before the shift."""
    high, n = 0.999, 4096
    uniform = Uniform().sample_below(n, high, torch.Generator().manual_seed(0))
    torch.testing.assert_close(uniform, torch.rand(n, generator=torch.Generator().manual_seed(0)) * high)
    logit = LogitNormal(0.0, 1.0).sample_below(n, high, torch.Generator().manual_seed(0))
    released = released_truncated_logitnormal(n, 0.0, 1.0, high, torch.Generator().manual_seed(0))
    torch.testing.assert_close(logit, released, rtol=1e-5, atol=1e-6)
    assert logit.max() <= high
    # high >= 1 is the plain draw (the same random numbers as sample)
    torch.testing.assert_close(LogitNormal().sample_below(8, 1.0, torch.Generator().manual_seed(3)),
                               LogitNormal().sample(8, torch.Generator().manual_seed(3)), rtol=0, atol=0)


@pytest.mark.parametrize("schedule", [Uniform(), LogitNormal(0.5, 0.8), ArctanLogNormal(-0.3, 1.1)])
def test_a_truncated_schedule_is_the_conditional_distribution(schedule):
    high, n = 0.6, 20000
    ordered = schedule.sample_below(n, high, torch.Generator().manual_seed(4)).double().sort().values
    assert ordered.max() <= high
    conditional = schedule.cdf(ordered) / schedule.cdf(torch.tensor(high, dtype=F64))
    ks = (torch.arange(1, n + 1, dtype=F64) / n - conditional).abs().max().item()
    assert ks < 1.63 / math.sqrt(n)  # Kolmogorov-Smirnov at the 1% level
    u = torch.tensor([0.1, 0.5, 0.9], dtype=F64)
    torch.testing.assert_close(schedule.cdf(schedule.icdf(u)), u)


def test_the_transport_truncates_before_the_shift():
    transport = Transport(time_schedule=LogitNormal(), shift_base_dim=4096, truncate_at=0.999)
    t = transport.sample_time(4096, (768, 16, 16), torch.Generator().manual_seed(6))
    draw = LogitNormal().sample_below(4096, 0.999, torch.Generator().manual_seed(6))
    torch.testing.assert_close(t, shift_time(draw, math.sqrt(48)))
    assert t.max() <= shift_time(torch.tensor(0.999), math.sqrt(48))
    with pytest.raises(ValueError, match="truncate_at must be in"):
        Transport(truncate_at=0.0)


def test_logit_normal_rejects_bad_std():
    with pytest.raises(ValueError, match="std must be positive"):
        LogitNormal(0.0, 0.0)
    with pytest.raises(ValueError, match="arctan_log_normal std must be positive"):
        ArctanLogNormal(0.0, -1.0)


def test_arctan_log_normal_is_repas_cosine_lognormal():
    """REPA's loss.py, --path-type cosine --weighting lognormal: sigma = exp(z), t = 2/pi atan(sigma); here
    with a mean and std (REPA's are 0 and 1) to show both enter."""
    mean, std, n = -1.2, 1.2, 20000
    t = ArctanLogNormal(mean, std).sample(n, torch.Generator().manual_seed(0)).double()
    assert 0 < t.min() and t.max() < 1
    probs = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=F64)
    z = math.sqrt(2) * torch.erfinv(2 * probs - 1)
    analytic = 2 / math.pi * torch.atan(torch.exp(z * std + mean))  # quantiles of REPA's formula
    assert torch.allclose(torch.quantile(t, probs), analytic, atol=0.01)
    assert analytic[2].item() == pytest.approx(0.18624, abs=1e-4)  # median (2/pi) atan(e^-1.2)
    ordered = t.sort().values
    cdf = normal_cdf((torch.log(torch.tan(math.pi / 2 * ordered)) - mean) / std)
    ks = (torch.arange(1, n + 1, dtype=F64) / n - cdf).abs().max().item()
    assert ks < 1.63 / math.sqrt(n)  # Kolmogorov-Smirnov at the 1% level
    # The same draws through the linear path's rule differ: the two paths need their own schedules.
    linear = LogitNormal(mean, std).sample(n, torch.Generator().manual_seed(0)).double()
    assert (torch.quantile(linear, 0.5) - torch.quantile(t, 0.5)).abs() > 0.03


@pytest.mark.parametrize("fragment, path, schedule", [
    ("transport_linear_lognormal.gin", LinearPath, LogitNormal),
    ("transport_cosine_lognormal.gin", GVPPath, ArctanLogNormal),
])
def test_repa_lognormal_fragments(fragment, path, schedule):
    gin.clear_config()
    try:
        gin.add_config_file_search_path(str(ROOT / "gin"))
        gin.parse_config_file(str(ROOT / "gin" / "repa" / fragment))
        transport = gin.get_configurable("loss.transport")()
    finally:
        gin.clear_config()
    assert isinstance(transport.path, path) and transport.prediction == "velocity"
    assert type(transport.time_schedule) is schedule
    assert (transport.time_schedule.mean, transport.time_schedule.std) == (0.0, 1.0)
    assert transport.loss_weight == "none" and transport.shift((4, 32, 32)) == 1.0
    # REPA's loss.py on the same normal draws: sigma = exp(z); linear t = sigma / (1 + sigma),
    # cosine t = 2 / pi atan(sigma)
    sigma = torch.randn(1000, generator=torch.Generator().manual_seed(5)).exp()
    repa = sigma / (1 + sigma) if path is LinearPath else 2 / math.pi * torch.atan(sigma)
    ours = transport.sample_time(1000, (4, 32, 32), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ours, repa, rtol=1e-6, atol=1e-6)


# ---- gin ----

def test_rae_linear_fragment_builds_the_paper_transport():
    gin.clear_config()
    try:
        gin.parse_config_file(str(ROOT / "gin" / "transport" / "rae_linear.gin"))
        transport = gin.get_configurable("loss.transport")()
    finally:
        gin.clear_config()
    assert isinstance(transport.path, LinearPath) and transport.prediction == "velocity"
    assert isinstance(transport.time_schedule, LogitNormal)
    assert (transport.time_schedule.mean, transport.time_schedule.std) == (0.0, 1.0)
    assert transport.loss_weight == "none" and transport.shift((768, 16, 16)) == pytest.approx(math.sqrt(48))
    assert transport.truncate_at == 0.999  # RAE's check_interval: t1 = 1 - 1/1000
    assert set(TIME_SCHEDULES.names()) >= {"uniform", "logit_normal"} and "transport" in LOSSES
