"""torch_xla: the accelerator's XLA device, a stage-2 training step and native sampling match the CPU.

Runs on torch_xla's CPU device (``PJRT_DEVICE=CPU``) in the separate environment that
``bash tools/xla_env.sh`` builds; torch_xla is not installed in the main environment.
"""
import copy
import os

import pytest
import torch

pytest.importorskip(
    "torch_xla",
    reason="torch_xla is not installed in this environment; run `bash tools/xla_env.sh` to build "
    "a separate one with a matching torch + torch_xla pair and run these tests (docs/xla.md)",
)
os.environ.setdefault("PJRT_DEVICE", "CPU")

from rae.accelerator import make_accelerator  # noqa: E402
from rae.backbones import DiTDH  # noqa: E402
from rae.sampling import EulerSampler, HeunSampler, NoGuidance  # noqa: E402
from rae.train.optim import make_adamw  # noqa: E402
from rae.train.step import accumulate_gradients, optimizer_step  # noqa: E402
from rae.transport import Transport  # noqa: E402

SHAPE = (8, 4, 4)


def tiny_backbone() -> DiTDH:
    """A tiny DiT-DH with every parameter perturbed (so no adaLN-Zero layer hides a mismatch)."""
    torch.manual_seed(0)
    model = DiTDH(hidden_size=32, depth=1, num_heads=2, head_hidden_size=48, head_depth=1, head_num_heads=3,
                  input_size=4, patch_size=1, in_channels=8, num_classes=10, class_dropout_prob=0.0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model


def test_accelerator_picks_the_xla_device(monkeypatch):
    acc = make_accelerator("xla")
    assert acc.device.type == "xla" and acc.is_xla
    assert (acc.rank, acc.world_size, acc.is_main) == (0, 1, True)
    monkeypatch.setenv("RAE_DEVICE", "xla")
    assert make_accelerator(None).device.type == "xla"
    bf16 = make_accelerator("xla", "bf16")
    a = torch.randn(4, 4).to(bf16.device)
    with bf16.autocast():
        assert (a @ a).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision on XLA"):
        make_accelerator("xla", "fp16")
    bf16.barrier()  # one process: nothing to wait for


def train(device: torch.device, steps: int) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """``steps`` stage-2 optimiser steps on ``device``; data, noise and times drawn on the CPU."""
    acc = make_accelerator(str(device) if device.type == "cpu" else "xla")
    model = tiny_backbone().to(acc.device).train()
    transport = Transport()
    optimizer = make_adamw(model.parameters(), lr=1e-3, weight_decay=0.01)
    gen = torch.Generator().manual_seed(2)
    losses = []
    for _ in range(steps):
        x0, noise = torch.randn(4, *SHAPE, generator=gen), torch.randn(4, *SHAPE, generator=gen)
        t, y = torch.rand(4, generator=gen), torch.randint(0, 10, (4,), generator=gen)
        batch = [v.to(acc.device) for v in (x0, noise, t, y)]

        def loss_fn(mb):
            point = transport.point(mb[0], mb[1], mb[2])
            return transport.loss(model(point.x_t, point.t, mb[3]), point).mean(), {}

        metrics = accumulate_gradients(loss_fn, [tuple(batch)], acc)
        optimizer_step(optimizer, model.parameters(), clip_grad=1.0)
        acc.mark_step()
        losses.append(metrics["loss"].cpu())
    return losses, {k: v.detach().cpu() for k, v in model.state_dict().items()}


@pytest.mark.slow  # XLA compiles the step's graph on the CPU: about a minute
def test_stage2_training_step_on_xla_matches_cpu():
    cpu_losses, cpu_state = train(torch.device("cpu"), steps=2)
    xla_losses, xla_state = train(torch.device("xla"), steps=2)
    torch.testing.assert_close(torch.stack(xla_losses), torch.stack(cpu_losses), rtol=1e-4, atol=1e-5)
    assert cpu_losses[0] > 0 and not torch.equal(cpu_state["x_embedder.proj.weight"],
                                                 tiny_backbone().state_dict()["x_embedder.proj.weight"])
    for name, value in cpu_state.items():
        torch.testing.assert_close(xla_state[name], value, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow  # XLA compiles the sampling graph: about ten seconds
@pytest.mark.parametrize("sampler", [EulerSampler(num_steps=6, shift=2.0), HeunSampler(num_steps=4)])
def test_native_sampler_on_xla_matches_cpu(sampler):
    acc = make_accelerator("xla")
    transport = Transport()
    model = tiny_backbone().eval()
    gen = torch.Generator().manual_seed(3)
    noise, y = torch.randn(3, *SHAPE, generator=gen), torch.tensor([1, 4, 7])
    with torch.no_grad():
        expected = sampler.sample(NoGuidance().velocity_fn(model, to_velocity=transport.velocity), noise, y)
        on_xla = copy.deepcopy(model).to(acc.device)
        got = sampler.sample(NoGuidance().velocity_fn(on_xla, to_velocity=transport.velocity),
                             noise.to(acc.device), y.to(acc.device))
        acc.mark_step()
    assert got.device.type == "xla"
    assert (expected - noise).abs().mean() > 0.1  # the model moved the samples
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-4)
