"""Stage 1's D update against RAE's (src/train_stage1.py): two forwards of the heads in train mode."""
from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

from rae.accelerator import Accelerator
from rae.experiments.stage1 import discriminator_step, power_iteration
from rae.losses import DinoDiscriminator, hinge_d_loss
from rae.losses.gan import D_LOSS_TERMS, DiscLossTerms

ACC = Accelerator(torch.device("cpu"))
IDENTITY = (lambda images, start: images, lambda images, start: images)


@pytest.fixture(scope="module")
def start() -> DinoDiscriminator:
    """Heads whose spectral norms start from random unit u, v (as the release's do), far from converged,
    so that every power iteration moves them."""
    torch.manual_seed(0)
    disc = DinoDiscriminator(input_size=32).eval()
    with torch.no_grad():
        for name, vector in disc.heads.named_buffers():
            if name.endswith(("_u", "_v")):
                vector.copy_(F.normalize(torch.randn_like(vector), dim=0))
    return disc


def release_d_step(disc: DinoDiscriminator, optimizer: torch.optim.Optimizer, fakes: torch.Tensor,
                   reals: torch.Tensor) -> None:
    """RAE's D step: ``discriminator(fake, real)`` with the heads in train mode (one forward each, so
    one spectral-norm power iteration each, fakes first), one hinge loss over the whole batch."""
    disc.train().requires_grad_(True)
    logits_fake, logits_real = disc(fakes), disc(reals)
    hinge_d_loss(logits_real, logits_fake).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    disc.eval().requires_grad_(False)


def heads_after(start: DinoDiscriminator, update, steps: int = 2) -> dict[str, torch.Tensor]:
    """The heads' weights and power-iteration vectors after ``steps`` updates by ``update``."""
    disc = copy.deepcopy(start)
    optimizer = torch.optim.SGD(disc.heads.parameters(), lr=0.5)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        fakes, reals = torch.rand(4, 3, 32, 32, generator=gen), torch.rand(4, 3, 32, 32, generator=gen)
        update(disc, optimizer, fakes, reals)
    return disc.heads.state_dict()


def ours(micro_batch_size: int | None, loss: DiscLossTerms = D_LOSS_TERMS["hinge"]):
    return lambda disc, optimizer, fakes, reals: discriminator_step(
        disc, optimizer, fakes, reals, IDENTITY, loss, micro_batch_size, None, ACC)


@pytest.mark.parametrize("micro_batch_size", [None, 1, 2])
def test_d_step_is_the_releases_two_forwards_for_any_micro_batch_split(start, micro_batch_size):
    expected = heads_after(start, release_d_step)
    got = heads_after(start, ours(micro_batch_size))
    assert any(key.endswith("_u") for key in expected)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_one_power_iteration_per_d_step_leaves_other_u_v_but_the_same_weights(start):
    """The check above can fail: one power iteration per D step (both sides on the weights after it)
    leaves other u, v. D's weights move the same (up to float noise and the norms' eps): every head
    convolution but the last feeds a per-sample normalisation, which cancels its scale 1/sigma, and
    the last is 1 x C, whose sigma one power iteration finds exactly."""
    def one_iteration(disc, optimizer, fakes, reals):
        power_iteration(disc.heads)
        disc.requires_grad_(True)
        hinge_d_loss(disc(reals), disc(fakes)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        disc.requires_grad_(False)

    expected, single = heads_after(start, release_d_step), heads_after(start, one_iteration)
    vectors = [key for key in expected if key.endswith(("_u", "_v"))]
    assert sum(not torch.allclose(single[key], expected[key], atol=1e-3) for key in vectors) >= 10
    for key in set(expected) - set(vectors):
        torch.testing.assert_close(single[key], expected[key], rtol=1e-4, atol=1e-6, msg=key)


def test_d_step_reports_the_hinge_loss_and_mean_logits(start):
    disc = copy.deepcopy(start)
    fakes, reals = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    probe = copy.deepcopy(start).train()
    with torch.no_grad():
        logits_fake, logits_real = probe(fakes), probe(reals)
    metrics = discriminator_step(disc, torch.optim.SGD(disc.heads.parameters(), lr=0.0), fakes, reals, IDENTITY,
                                 D_LOSS_TERMS["hinge"], 2, None, ACC)
    torch.testing.assert_close(metrics["loss/disc"], hinge_d_loss(logits_real, logits_fake))
    torch.testing.assert_close(metrics["disc/logits_fake"], logits_fake.mean())
    torch.testing.assert_close(metrics["disc/logits_real"], logits_real.mean())
    assert metrics["disc_grad_norm"] > 0
    assert not any(p.requires_grad for p in disc.parameters()) and not disc.heads.training
