"""A toy training loop on the shared machinery: exact resume, checkpoints, NaN stop."""
import logging

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from rae.accelerator import Accelerator
from rae.experiments.base import RunContext
from rae.tracking.tracker import Tracker
from rae.train.data_stream import DataStream, to_device
from rae.train.ema import EMA
from rae.train.optim import make_adamw, make_scheduler
from rae.train.session import TrainingSession
from rae.train.step import (
    NonFiniteLoss,
    accumulate_gradients,
    optimizer_step,
    split_batch,
)


class Recorder(Tracker):
    def __init__(self):
        self.values = []

    def track(self, name, value, step, context=None):
        self.values.append((name, step, value))


def _train(run_dir, total_steps, stop_after=None, poison_at=None):
    """Train a noisy regression; returns (losses per step, final weights, ema weights)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(40, 5, generator=g), torch.randn(40, 2, generator=g))
    acc = Accelerator(torch.device("cpu"))
    ctx = RunContext(acc, Recorder(), run_dir, seed=0, log=logging.getLogger("test"))
    model = nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.3), nn.Linear(8, 2))
    ema = EMA(model, 0.9)
    opt = make_adamw(model.parameters(), lr=1e-2)
    sched = make_scheduler(opt, "linear", warmup_steps=2, decay_end_step=total_steps, final_lr=1e-3)
    stream = DataStream(data, batch_size=6, accelerator=acc, seed=0, shuffle=True)
    session = TrainingSession(ctx, {"model": model, "ema": ema, "opt": opt, "sched": sched, "data": stream},
                              total_steps=total_steps, log_every=2, checkpoint_every=3)
    session.resume()
    losses = []
    while not session.done:
        x, y = to_device(next(stream), acc.device)
        noise = torch.randn_like(y) * 0.1  # draws from the global RNG, as diffusion noise does

        def loss_fn(mb):
            xb, yb, nb = mb
            loss = ((model(xb) - yb - nb) ** 2).mean()
            if poison_at is not None and session.step + 1 >= poison_at:
                loss = loss * float("nan")
            return loss, {}

        metrics = accumulate_gradients(loss_fn, split_batch((x, y, noise), 3), acc)
        optimizer_step(opt, model.parameters(), clip_grad=1.0)
        sched.step()
        ema.update(model)
        losses.append(metrics["loss"].item())
        session.end_step(metrics, images=6, scalars={"lr": sched.get_last_lr()[0]})
        if stop_after is not None and session.step == stop_after:
            break
    return losses, [p.detach().clone() for p in model.parameters()], [p.clone() for p in ema.model.parameters()]


def test_resume_gives_the_same_losses_and_weights_as_an_uninterrupted_run(tmp_path):
    full_losses, full_w, full_ema = _train(tmp_path / "a", total_steps=13)  # crosses epoch boundaries
    first, _, _ = _train(tmp_path / "b", total_steps=13, stop_after=6)
    rest, w, ema = _train(tmp_path / "b", total_steps=13)
    assert first + rest == pytest.approx(full_losses, rel=1e-6, abs=1e-7)
    for p, q in zip(full_w + full_ema, w + ema):
        torch.testing.assert_close(p, q)


def test_resume_from_a_non_multiple_of_the_checkpoint_cadence_uses_the_last_checkpoint(tmp_path):
    full_losses, full_w, _ = _train(tmp_path / "a", total_steps=10)
    first, _, _ = _train(tmp_path / "b", total_steps=10, stop_after=5)  # checkpoint at 3 only
    rest, w, _ = _train(tmp_path / "b", total_steps=10)
    assert len(rest) == 7
    assert first[:3] + rest == pytest.approx(full_losses, rel=1e-6, abs=1e-7)
    for p, q in zip(full_w, w):
        torch.testing.assert_close(p, q)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(NonFiniteLoss, match="step 4"):
        _train(tmp_path, total_steps=10, poison_at=4)
    saved = sorted(p.name for p in (tmp_path / "checkpoints").glob("ckpt-*.pt"))
    assert saved == ["ckpt-000000003.pt"]


def test_stream_rejects_a_dataset_smaller_than_a_global_batch():
    data = TensorDataset(torch.zeros(3, 1))
    with pytest.raises(ValueError, match="fewer than one global batch"):
        DataStream(data, batch_size=4, accelerator=Accelerator(torch.device("cpu")), seed=0)


def test_a_data_position_saved_on_two_ranks_resumes_on_one_with_the_same_samples():
    data = TensorDataset(torch.arange(24.0))
    ranks = [DataStream(data, batch_size=3, accelerator=Accelerator(torch.device("cpu"), rank=r, world_size=2),
                        seed=5) for r in range(2)]
    for _ in range(3):  # 9 samples per rank: the epoch's global order is consumed up to position 18
        for stream in ranks:
            next(stream)
    state = ranks[0].state_dict()
    assert state == {"epoch": 0, "consumed": 18}
    one = DataStream(data, batch_size=6, accelerator=Accelerator(torch.device("cpu")), seed=5)
    one.load_state_dict(state)
    (two_r0,), (two_r1,) = next(ranks[0]), next(ranks[1])
    (together,) = next(one)
    assert sorted(together.tolist()) == sorted(two_r0.tolist() + two_r1.tolist())
    assert together[0::2].tolist() == two_r0.tolist()  # rank r holds the rows r, r + 2, ... of the global batch

    four = DataStream(data, batch_size=1, accelerator=Accelerator(torch.device("cpu"), rank=0, world_size=4), seed=5)
    with pytest.raises(ValueError, match="cannot be split over 4 ranks"):
        four.load_state_dict(state)
