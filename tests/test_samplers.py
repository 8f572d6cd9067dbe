"""Samplers and time grids, checked against the exact velocity field of Gaussian data.

For data x0 ~ N(mu, diag(s^2)) on the linear path x_t = (1 - t) x0 + t eps, with a = 1 - t and
V = a^2 s^2 + t^2 (the variance of x_t):
    E[x0 | x_t] = mu + a s^2 / V (x_t - a mu),   E[eps | x_t] = t / V (x_t - a mu),
    v(x, t) = E[eps - x0 | x_t] = (t - a s^2) / V (x - a mu) - mu,   score = -(x - a mu) / V.
The ODE flow of this field maps noise z to mu + s z exactly (per coordinate it is the monotone
map between Gaussians), so ODE samplers are checked sample by sample and SDE samplers by moments.
"""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rae.registry import SAMPLERS
from rae.sampling import EulerSampler, HeunSampler, ODESampler, SDESampler, resolve_shift, time_grid
from rae.sampling.cfg import ClassifierFreeGuidance
from rae.transport import GVPPath, LinearPath, Transport

DIM = 3
ROOT = Path(__file__).resolve().parent.parent


class GaussianVelocity:
    """The exact velocity of class-conditional Gaussian data; class K (the null label) is broader."""

    def __init__(self, num_classes: int = 4, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.mu = torch.randn(num_classes + 1, DIM, generator=gen, dtype=torch.float64) * 2
        self.s = 0.2 + torch.rand(num_classes + 1, DIM, generator=gen, dtype=torch.float64)
        self.calls = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        mu, s = self.mu[y], self.s[y]
        t = t.to(torch.float64)[:, None]
        a = 1 - t
        var = a**2 * s**2 + t**2
        return ((t - a * s**2) / var * (x - a * mu) - mu).to(x.dtype)


def noise_and_labels(n: int, seed: int = 1, num_classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, DIM, generator=gen, dtype=torch.float64), torch.arange(n) % num_classes


# ---- time grid ----

def test_grid_is_the_reference_shifted_linspace():
    s, n = 2.5, 7
    u = 1 - np.linspace(0, 1, n)
    expected = s * u / (1 + (s - 1) * u)
    assert np.allclose(time_grid(n, s).numpy(), expected, atol=1e-12)
    assert time_grid(n, s)[0] == 1 and time_grid(n, s)[-1] == 0
    # the released sampler stops at 1e-3 before the shift
    assert math.isclose(time_grid(n, s, end=1e-3)[-1].item(), s * 1e-3 / (1 + (s - 1) * 1e-3))


def test_auto_shift_is_sqrt_of_latent_dim_over_4096():
    assert math.isclose(resolve_shift("auto", (768, 16, 16)), math.sqrt(48))
    assert resolve_shift(3.0, (768, 16, 16)) == 3.0
    with pytest.raises(ValueError, match="positive number or 'auto'"):
        resolve_shift("sqrt", (4,))


def test_bad_grids_are_refused():
    with pytest.raises(ValueError, match="num_steps >= 2"):
        EulerSampler(num_steps=1)
    with pytest.raises(ValueError, match="0 <= end < start <= 1"):
        ODESampler(method="euler", start=0.5, end=0.7)
    with pytest.raises(ValueError, match="unknown ODE method 'rk45'.*dopri5"):
        ODESampler(method="rk45")


# ---- native solvers against torchdiffeq ----

def nonlinear(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.sin(3 * x) * t[:, None] - 0.5 * x + y[:, None].to(x.dtype)


@pytest.mark.parametrize("native, method", [(EulerSampler, "euler"), (HeunSampler, "heun")])
def test_native_solvers_take_torchdiffeq_steps(native, method):
    x, y = noise_and_labels(5)
    ours = native(num_steps=9, shift=2.0).sample(nonlinear, x, y)
    theirs = ODESampler(method=method, num_steps=9, shift=2.0).sample(nonlinear, x, y)
    assert torch.allclose(ours, theirs, atol=1e-12)
    assert not torch.allclose(ours, ODESampler(method=method, num_steps=9).sample(nonlinear, x, y), atol=1e-3)


def test_euler_makes_num_steps_minus_one_calls_and_heun_twice_that():
    x, y = noise_and_labels(4)
    for sampler, calls in ((EulerSampler(num_steps=10), 9), (HeunSampler(num_steps=10), 18),
                           (ODESampler(method="euler", num_steps=10), 9)):
        field = GaussianVelocity()
        sampler.sample(field, x, y)
        assert field.calls == calls, type(sampler).__name__


# ---- the analytic check: every ODE sampler maps noise to mu + s z ----

ODE_SAMPLERS = {  # name: (sampler, largest error allowed for any sample)
    "euler": (EulerSampler(num_steps=200), 0.04),  # first order: error ~ 1 / steps
    "euler_shift": (EulerSampler(num_steps=200, shift=3.0), 0.05),
    "heun": (HeunSampler(num_steps=30), 0.005),
    "heun_shift": (HeunSampler(num_steps=30, shift=3.0), 0.01),
    "ode_euler_shift": (ODESampler(method="euler", num_steps=200, shift=3.0), 0.05),
    "ode_midpoint": (ODESampler(method="midpoint", num_steps=30), 0.005),
    "ode_heun3_shift": (ODESampler(method="heun3", num_steps=20, shift=3.0), 0.005),
    "ode_dopri5": (ODESampler(method="dopri5", atol=1e-6, rtol=1e-3), 0.04),
}


@pytest.fixture(autouse=True)
def one_thread():
    """Thousands of tiny tensor ops: a second thread only adds contention on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", ODE_SAMPLERS)
def test_ode_samplers_transport_noise_to_the_gaussian(name):
    sampler, tolerance = ODE_SAMPLERS[name]
    field = GaussianVelocity()
    z, y = noise_and_labels(4000)
    x = sampler.sample(field, z, y)
    exact = field.mu[y] + field.s[y] * z
    assert (x - exact).abs().max() < tolerance
    for k in range(4):  # and so the class moments are the target's
        xk = x[y == k]
        assert torch.allclose(xk.mean(0), field.mu[k], atol=0.05)
        assert torch.allclose(torch.cov(xk.T), torch.diag(field.s[k] ** 2), atol=0.05 + 0.1 * field.s[k].max() ** 2)


def test_coarse_euler_is_measurably_off():
    """The analytic check can fail: 3 Euler steps do not reach the target."""
    field = GaussianVelocity()
    z, y = noise_and_labels(64)
    x = EulerSampler(num_steps=4).sample(field, z, y)
    assert (x - (field.mu[y] + field.s[y] * z)).abs().max() > 0.1


def test_cfg_with_scale_one_is_conditional_sampling():
    field = GaussianVelocity()
    z, y = noise_and_labels(64)
    sampler = EulerSampler(num_steps=20, shift=2.0)
    guided = sampler.sample(ClassifierFreeGuidance(scale=1.0).velocity_fn(field, num_classes=4), z, y)
    assert torch.equal(guided, sampler.sample(field, z, y))
    stronger = sampler.sample(ClassifierFreeGuidance(scale=2.0).velocity_fn(field, num_classes=4), z, y)
    assert not torch.allclose(stronger, guided, atol=1e-2)


def repa_euler_sampler(velocity, x: torch.Tensor, y: torch.Tensor, num_steps: int, heun: bool) -> torch.Tensor:
    """REPA's samplers.py euler_sampler without CFG, written out: N steps on linspace(1, 0, N + 1);
    with ``heun`` the corrector runs on every step but the last (``if heun and (i < num_steps - 1)``)."""
    t = torch.linspace(1, 0, num_steps + 1, dtype=torch.float64)
    for i in range(num_steps):
        t_cur, t_next = t[i].item(), t[i + 1].item()
        d_cur = velocity(x, torch.full((x.shape[0],), t_cur, dtype=x.dtype), y)
        x_next = x + (t_next - t_cur) * d_cur
        if heun and i < num_steps - 1:
            d_prime = velocity(x_next, torch.full((x.shape[0],), t_next, dtype=x.dtype), y)
            x_next = x + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_prime)
        x = x_next
    return x


def test_repa_heun_skips_the_corrector_on_the_last_step():
    z, y = noise_and_labels(16)
    calls = []
    counted = lambda x, t, y: calls.append(1) or nonlinear(x, t, y)
    ours = HeunSampler(num_steps=6, euler_last_step=True).sample(counted, z, y)
    assert len(calls) == 2 * 5 - 1
    torch.testing.assert_close(ours, repa_euler_sampler(nonlinear, z, y, num_steps=5, heun=True), rtol=0, atol=1e-12)
    # the same states up to the last step, which is Euler's from there (and not Heun's)
    before_last = HeunSampler(num_steps=5, start=1.0, end=0.2).sample(nonlinear, z, y)
    euler_step = before_last - 0.2 * nonlinear(before_last, torch.full((16,), 0.2, dtype=z.dtype), y)
    torch.testing.assert_close(ours, euler_step, rtol=0, atol=1e-12)
    full = HeunSampler(num_steps=6).sample(nonlinear, z, y)
    assert not torch.allclose(full, ours, atol=1e-4)


def test_repa_ode_fragments_are_its_euler_and_heun_samplers():
    import gin

    z, y = noise_and_labels(8)
    for fragment, heun in (("ode_euler_50.gin", False), ("ode_heun_50.gin", True)):
        gin.clear_config()
        try:
            gin.parse_config_file(str(ROOT / "gin" / "repa" / fragment))
            sampler = gin.query_parameter("%SAMPLER").scoped_configurable_fn()
        finally:
            gin.clear_config()
        expected = repa_euler_sampler(nonlinear, z, y, num_steps=50, heun=heun)
        torch.testing.assert_close(sampler.sample(nonlinear, z, y), expected, rtol=0, atol=1e-12)


# ---- SDE ----

def moments_match(x: torch.Tensor, y: torch.Tensor, field: GaussianVelocity) -> None:
    for k in range(4):
        xk = x[y == k]
        assert torch.allclose(xk.mean(0), field.mu[k], atol=0.06), (k, xk.mean(0), field.mu[k])
        assert torch.allclose(xk.std(0), field.s[k], rtol=0.06, atol=0.02), (k, xk.std(0), field.s[k])


@pytest.mark.parametrize("form, last, shift", [
    ("sigma", "mean", 1.0), ("sigma", "mean", 3.0), ("constant", "tweedie", 1.0),
    ("linear", "euler", 1.0), ("sigma", "none", 1.0),
])
def test_sde_reproduces_the_gaussian_moments(form, last, shift):
    field = GaussianVelocity()
    z, y = noise_and_labels(16000)
    sampler = SDESampler(num_steps=250, shift=shift, diffusion_form=form, last_step=last)
    x = sampler.sample(field, z, y, generator=torch.Generator().manual_seed(0), path=LinearPath())
    moments_match(x, y, field)


def repa_euler_maruyama(velocity, x: torch.Tensor, y: torch.Tensor, num_steps: int, path_type: str,
                        generator: torch.Generator) -> torch.Tensor:
    """REPA's samplers.py euler_maruyama_sampler without CFG, written out: grid linspace(1, 0.04, N) then 0,
    diffusion compute_diffusion(t) = 2 t on every path, score from the velocity, a noise-free last step."""

    def drift(x, t):
        t_b = torch.full((x.shape[0], 1), t, dtype=x.dtype)
        if path_type == "linear":
            alpha, sigma, d_alpha, d_sigma = 1 - t_b, t_b, -torch.ones_like(t_b), torch.ones_like(t_b)
        else:
            alpha, sigma = torch.cos(t_b * math.pi / 2), torch.sin(t_b * math.pi / 2)
            d_alpha, d_sigma = -math.pi / 2 * torch.sin(t_b * math.pi / 2), math.pi / 2 * torch.cos(t_b * math.pi / 2)
        v = velocity(x, t_b[:, 0], y)
        ratio = alpha / d_alpha
        score = (ratio * v - x) / (sigma**2 - ratio * d_sigma * sigma)
        return v - 0.5 * (2 * t) * score

    t = torch.cat([torch.linspace(1.0, 0.04, num_steps, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    for t_cur, t_next in zip(t[:-2].tolist(), t[1:-1].tolist()):
        dt = t_next - t_cur
        eps = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        x = x + drift(x, t_cur) * dt + math.sqrt(2 * t_cur) * eps * math.sqrt(abs(dt))
    return x + (t[-1] - t[-2]).item() * drift(x, t[-2].item())


@pytest.mark.parametrize("path_type, path", [("linear", LinearPath()), ("cosine", GVPPath())])
def test_sde_250_fragment_is_repas_euler_maruyama_on_both_paths(path_type, path):
    import gin

    gin.clear_config()
    try:
        gin.parse_config_file(str(ROOT / "gin" / "samplers" / "sde_250.gin"))
        sampler = gin.query_parameter("%SAMPLER").scoped_configurable_fn()
    finally:
        gin.clear_config()
    z, y = noise_and_labels(16)
    ours = sampler.sample(nonlinear, z, y, generator=torch.Generator().manual_seed(2), path=path)
    expected = repa_euler_maruyama(nonlinear, z, y, 250, path_type, torch.Generator().manual_seed(2))
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-9)
    # w = sigma(t) is REPA's diffusion on the linear path only
    sigma_form = SDESampler(num_steps=250, diffusion_form="sigma").sample(
        nonlinear, z, y, generator=torch.Generator().manual_seed(2), path=path)
    assert torch.allclose(sigma_form, expected, atol=1e-9) == (path_type == "linear")


def test_sde_sbdm_needs_a_start_below_one():
    field = GaussianVelocity()
    z, y = noise_and_labels(16000)
    with pytest.raises(ValueError, match="'sbdm' gives w\\(1\\) = inf"):
        SDESampler(diffusion_form="sbdm").sample(field, z, y, path=LinearPath())
    x = SDESampler(diffusion_form="sbdm", start=0.999).sample(
        field, z, y, generator=torch.Generator().manual_seed(0), path=LinearPath())
    moments_match(x, y, field)


def test_sde_with_the_wrong_path_misses_the_moments():
    """The score comes from the path: GVP coefficients for a linear-path field must fail the check."""
    field = GaussianVelocity()
    z, y = noise_and_labels(16000)
    x = SDESampler(diffusion_form="constant").sample(
        field, z, y, generator=torch.Generator().manual_seed(0), path=GVPPath())
    with pytest.raises(AssertionError):
        moments_match(x, y, field)


def test_sde_noise_follows_the_generator_and_needs_a_path():
    field = GaussianVelocity()
    z, y = noise_and_labels(8)
    sampler = SDESampler(num_steps=20)
    run = lambda seed: sampler.sample(field, z, y, generator=torch.Generator().manual_seed(seed), path=LinearPath())
    assert torch.equal(run(3), run(3))
    assert not torch.allclose(run(3), run(4))
    with pytest.raises(ValueError, match="needs the transport's path"):
        sampler.sample(field, z, y)
    with pytest.raises(ValueError, match="unknown last_step 'Mean'"):
        SDESampler(last_step="Mean")


def test_sde_model_calls_are_num_steps_with_a_last_step():
    field = GaussianVelocity()
    z, y = noise_and_labels(4)
    SDESampler(num_steps=25).sample(field, z, y, path=LinearPath())
    assert field.calls == 25  # 24 Euler-Maruyama steps + the last "mean" step, as REPA's 250


def test_samplers_take_any_prediction_through_the_transport():
    """A noise-predicting model, converted by the transport, samples the same Gaussian.

    Its velocity (eps - x) / (1 - t) is singular at t = 1, so sampling starts at 1 - 1e-3 (SiT's eps).
    """
    field = GaussianVelocity()
    transport = Transport(prediction="noise")

    def noise_model(x, t, y):  # eps = x + (1 - t) v on the linear path
        return x + (1 - t[:, None]) * field(x, t, y)

    z, y = noise_and_labels(256)
    v = lambda x, t, y: transport.velocity(noise_model(x, t, y), x, t)
    x = HeunSampler(num_steps=30, start=1 - 1e-3).sample(v, z, y)
    assert (x - (field.mu[y] + field.s[y] * z)).abs().max() < 0.03


def test_samplers_are_registered():
    assert {"ode", "euler", "heun", "sde"} <= set(SAMPLERS.names())
