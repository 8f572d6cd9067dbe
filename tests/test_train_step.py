"""Gradient accumulation equals one large batch; schedules, EMA and RNG capture behave."""
import math
import random
from typing import Any

import pytest
import torch
from torch import nn

from rae.accelerator import Accelerator
from rae.train.ema import EMA
from rae.train.optim import lr_factor, make_adamw, make_scheduler
from rae.train.rng import rng_state, set_rng_state
from rae.train.step import NonFiniteLoss, accumulate_gradients, check_finite, optimizer_step, split_batch

CPU = Accelerator(torch.device("cpu"))


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Linear(16, 3))


def _train_once(micro_batch_size):
    model = _model()
    opt = make_adamw(model.parameters(), lr=1e-2, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)

    def loss_fn(mb):
        xb, yb = mb
        loss = ((model(xb) - yb) ** 2).mean()
        return loss, {"l1": (model(xb) - yb).abs().mean()}

    metrics = accumulate_gradients(loss_fn, split_batch((x, y), micro_batch_size), CPU)
    norm = optimizer_step(opt, model.parameters(), clip_grad=None)
    return model, metrics, norm


def test_four_micro_batches_of_two_equal_one_batch_of_eight():
    big, m_big, n_big = _train_once(None)
    small, m_small, n_small = _train_once(2)
    for p, q in zip(big.parameters(), small.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(m_big["loss"], m_small["loss"])
    torch.testing.assert_close(m_big["l1"], m_small["l1"])
    torch.testing.assert_close(n_big, n_small)


def test_uneven_micro_batches_are_weighted_by_their_size():
    big, _, _ = _train_once(None)
    uneven, _, _ = _train_once(3)  # 3 + 3 + 2
    for p, q in zip(big.parameters(), uneven.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def test_clipping_reports_the_pre_clip_norm_and_clips():
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    (model(torch.full((1, 4), 100.0)).sum()).backward()
    expected = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    before = [p.detach().clone() for p in model.parameters()]
    norm = optimizer_step(opt, model.parameters(), clip_grad=1.0)
    torch.testing.assert_close(norm, expected)
    step = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters())])
    assert step.norm() == pytest.approx(1.0, rel=1e-5)
    assert all(p.grad is None for p in model.parameters())


def test_lr_schedules_match_their_formulas():
    # linear: warmup 10 steps, decay from 1 to 0.1 by step 110, then flat
    assert lr_factor(0, "linear", 10, 110, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, "linear", 10, 110, 0.1) == pytest.approx(1.0)
    assert lr_factor(60, "linear", 10, 110, 0.1) == pytest.approx(0.55)
    assert lr_factor(500, "linear", 10, 110, 0.1) == pytest.approx(0.1)
    # cosine: halfway is the midpoint of base and final
    assert lr_factor(60, "cosine", 10, 110, 0.1) == pytest.approx(0.55)
    assert lr_factor(35, "cosine", 10, 110, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(0, "step", 0, 0, 1.0)


def scheduled_lrs(**options: Any) -> list[float]:
    """The lr of a 2e-4 optimizer at each of six steps under a linear ``make_scheduler`` (warmup 2, decay to 4)."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2e-4)
    sched = make_scheduler(opt, "linear", warmup_steps=2, decay_end_step=4, final_lr=2e-5, **options)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_scheduler_drives_the_optimizer_lr():
    assert scheduled_lrs() == pytest.approx([1e-4, 2e-4, 2e-4, 1.1e-4, 2e-5, 2e-5])


def _released_factor(step: int, steps_per_epoch: int, warmup_from_zero: bool) -> float:
    """RAE's build_scheduler (src/utils/optim_utils.py), type linear, with the released stage-2 yaml's
    warmup_epochs 40, decay_end_epoch 800, base_lr 2e-4, final_lr 2e-5, written out independently."""
    warmup, decay_end, final_ratio = int(40 * steps_per_epoch), int(800 * steps_per_epoch), 2e-5 / 2e-4
    if step < warmup:
        return (step + 1) / warmup if warmup_from_zero else 1.0
    if step >= decay_end:
        return final_ratio
    return 1.0 - (1.0 - final_ratio) * (step - warmup) / max(decay_end - warmup, 1)


@pytest.mark.parametrize("warmup, from_zero", [("constant", False), ("linear", True)])
def test_the_released_stage2_lr_per_step(warmup, from_zero):
    per_epoch = 1251  # ImageNet-1k at batch 1024, drop_last
    epoch = [0, 1, 2, 3, 50039, 50040, 50041, 420 * per_epoch, 1000799, 1000800, 1000801, 1751399]
    for step in epoch:
        ours = lr_factor(step, "linear", 40 * per_epoch, 800 * per_epoch, 0.1, warmup)
        assert ours == pytest.approx(_released_factor(step, per_epoch, from_zero), rel=1e-12, abs=1e-15), step
    if warmup == "constant":  # 2e-4 flat for 40 epochs, then decay from epoch 40 (not 0) to 2e-5 at 800
        lrs = [2e-4 * lr_factor(s, "linear", 50040, 1000800, 0.1, warmup) for s in (0, 50039, 50040, 525420, 1000800)]
        assert lrs == pytest.approx([2e-4, 2e-4, 2e-4, 1.1e-4, 2e-5])
    with pytest.raises(ValueError, match="warmup"):
        lr_factor(0, "linear", 10, 20, 0.1, "cosine")


def test_a_constant_warmup_scheduler_holds_the_base_lr():
    assert scheduled_lrs(warmup="constant") == pytest.approx([2e-4, 2e-4, 2e-4, 1.1e-4, 2e-5, 2e-5])


def test_ema_update_formula_and_buffers():
    model = nn.BatchNorm1d(3)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(2.0)
        model.running_mean.fill_(5.0)
    ema.update(model)
    torch.testing.assert_close(ema.model.weight, torch.full((3,), 0.9 * 1.0 + 0.1 * 2.0))
    torch.testing.assert_close(ema.model.running_mean, torch.full((3,), 5.0))
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_ema_refuses_a_compiled_wrapper():
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self._orig_mod = nn.Linear(1, 1)

    with pytest.raises(ValueError, match="uncompiled"):
        EMA(Wrapped(), 0.99)


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    torch.manual_seed(3)
    random.seed(3)
    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    a = (torch.rand(3), random.random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    b = (torch.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and a[1] == b[1]


def test_non_finite_metrics_stop_with_the_step():
    check_finite({"loss": 1.0}, 3)
    with pytest.raises(NonFiniteLoss, match="step 7"):
        check_finite({"loss": float("nan")}, 7)
