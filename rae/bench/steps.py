"""One timed call of each side, written as each code base runs it in its own scripts.

Reference side (RAE's ``src/train.py``, ``src/train_stage1.py``, ``src/sample_ddp.py``):
``transport.training_losses`` under autocast, ``clip_grad_norm_``, the release's fused AdamW
(``utils/optim_utils.build_optimizer``); sampling through ``Sampler.sample_ode`` (torchdiffeq's
Euler) on the doubled batch ``cat([z, z])`` with ``forward_with_cfg`` or
``forward_with_autoguidance``, under ``no_grad``.
Our side (``rae/experiments/stage2.py``, ``stage1.py``, ``sample.py``): ``Transport.draw`` +
``Transport.loss``, ``optimizer_step`` (clip + AdamW from ``make_adamw``); sampling through
``EulerSampler`` and the guidance's ``velocity_fn``, under ``inference_mode``.
Phases carry ``record_function`` labels, so a profile shows where each side's time goes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from rae.accelerator import Accelerator
from rae.bench.pairs import Shapes, reference_decode
from rae.bench.reference import Reference
from rae.sampling.autoguidance import Autoguidance
from rae.sampling.cfg import ClassifierFreeGuidance
from rae.sampling.fixed_step import EulerSampler
from rae.train.optim import make_adamw
from rae.train.step import optimizer_step
from rae.transport.schedules import LogitNormal
from rae.transport.transport import Transport

Step = Callable[[], object]


@dataclass(frozen=True)
class Recipe:
    """Training and sampling settings shared by both sides (the release's stage-2 values by default)."""

    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    sample_steps: int = 50
    cfg_scale: float = 1.5
    cfg_interval: tuple[float, float] = (0.0, 1.0)
    ag_scale: float = 1.42


@dataclass(frozen=True)
class Inputs:
    """Fixed random inputs of one measurement, made once on the device and shared by both sides."""

    latents: torch.Tensor
    labels: torch.Tensor
    pixels: torch.Tensor | None = None

    @classmethod
    def make(cls, shapes: Shapes, batch: int, device: torch.device, pixels: bool = False, seed: int = 2) -> Inputs:
        g = torch.Generator().manual_seed(seed)
        latents = torch.randn(batch, *shapes.latent_shape, generator=g)
        labels = torch.randint(0, shapes.num_classes, (batch,), generator=g)
        side = shapes.decoder_patch * shapes.grid
        images = torch.randn(batch, 3, side, side, generator=g) if pixels else None
        return cls(latents.to(device), labels.to(device), None if images is None else images.to(device))


def compile_network(net: nn.Module, reference: bool) -> nn.Module:
    """``torch.compile`` as each side does it: the release compiles ``model.forward`` in place, we wrap the module."""
    if reference:
        net.forward = torch.compile(net.forward)
        return net
    return torch.compile(net)


# ---- training steps ----

def timed_training_step(loss_fn: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer,
                        params: list[nn.Parameter], acc: Accelerator, recipe: Recipe, reference: bool) -> Step:
    """One training step as each side runs it, each phase labelled: the release zeroes the gradients
    first, then clips (``clip_grad_norm_``) and steps its fused AdamW; ours clips, steps and zeroes
    them in ``optimizer_step``."""
    def step() -> None:
        if reference:
            optimizer.zero_grad(set_to_none=True)
        with record_function("forward+loss"), acc.autocast():
            loss = loss_fn()
        with record_function("backward"):
            loss.backward()
        with record_function("clip+adamw"):
            if reference:
                torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
                optimizer.step()
            else:
                optimizer_step(optimizer, params, recipe.grad_clip)

    return step


def reference_optimizer(params: list[nn.Parameter], ref: Reference, recipe: Recipe) -> torch.optim.Optimizer:
    """The release's fused AdamW (``utils/optim_utils.build_optimizer``) with the recipe's lr and betas."""
    optimizer, _ = ref.build_optimizer(params, {"optimizer": {"lr": recipe.lr, "betas": list(recipe.betas)}})
    return optimizer


def our_train_step(net: nn.Module, params: list[nn.Parameter], shapes: Shapes, inputs: Inputs, acc: Accelerator,
                   recipe: Recipe) -> Step:
    """Our stage-2 step: draw t and noise, velocity loss, backward, clip, AdamW (``make_adamw``: fused)."""
    transport = Transport(time_schedule=LogitNormal(0.0, 1.0), time_shift=shapes.time_shift)

    def loss() -> torch.Tensor:
        point = transport.draw(inputs.latents)
        return transport.loss(net(point.x_t, point.t, inputs.labels), point).mean()

    optimizer = make_adamw(params, recipe.lr, betas=recipe.betas)
    return timed_training_step(loss, optimizer, params, acc, recipe, reference=False)


def reference_train_step(net: nn.Module, params: list[nn.Parameter], ref: Reference, shapes: Shapes,
                         inputs: Inputs, acc: Accelerator, recipe: Recipe) -> Step:
    """The release's stage-2 step (``src/train.py``): ``training_losses``, backward, clip, fused AdamW."""
    transport = ref.create_transport(path_type="Linear", prediction="velocity", time_dist_type="logit-normal_0_1",
                                     time_dist_shift=shapes.time_shift)

    def loss() -> torch.Tensor:
        return transport.training_losses(net, inputs.latents, dict(y=inputs.labels))["loss"].mean()

    return timed_training_step(loss, reference_optimizer(params, ref, recipe), params, acc, recipe, reference=True)


def our_decoder_step(net: nn.Module, params: list[nn.Parameter], inputs: Inputs, acc: Accelerator,
                     recipe: Recipe) -> Step:
    """Our decoder step: latents -> pixels, L1 to fixed targets, backward, clip, AdamW."""
    optimizer = make_adamw(params, recipe.lr, betas=recipe.betas)
    return timed_training_step(lambda: F.l1_loss(net(inputs.latents).float(), inputs.pixels),
                               optimizer, params, acc, recipe, reference=False)


def reference_decoder_step(net: nn.Module, params: list[nn.Parameter], ref: Reference, inputs: Inputs,
                           acc: Accelerator, recipe: Recipe) -> Step:
    """The release's decoder step (``src/train_stage1.py``, decoder part): ``RAE.decode``, L1, clip, fused AdamW."""
    return timed_training_step(lambda: F.l1_loss(reference_decode(net, inputs.latents).float(), inputs.pixels),
                               reference_optimizer(params, ref, recipe), params, acc, recipe, reference=True)


# ---- sampling ----

def our_sample(net: nn.Module, shapes: Shapes, inputs: Inputs, acc: Accelerator, recipe: Recipe,
               guide: nn.Module | None = None) -> Step:
    """Our Euler sampling with CFG (``guide`` None: one 2B batch inside the interval, B outside) or autoguidance."""
    transport = Transport(time_shift=shapes.time_shift)
    sampler = EulerSampler(num_steps=recipe.sample_steps, shift=shapes.time_shift)
    if guide is None:
        guidance: Any = ClassifierFreeGuidance(recipe.cfg_scale, *recipe.cfg_interval)
    else:
        guidance = Autoguidance(guide, scale=recipe.ag_scale)
    velocity = guidance.velocity_fn(net, to_velocity=transport.velocity, num_classes=shapes.num_classes)

    def run() -> None:
        with torch.inference_mode(), acc.autocast():
            sampler.sample(velocity, inputs.latents, inputs.labels)

    return run


def reference_sample(net: nn.Module, ref: Reference, shapes: Shapes, inputs: Inputs, acc: Accelerator,
                     recipe: Recipe, guide: nn.Module | None = None) -> Step:
    """The release's guided sampling (``src/sample_ddp.py``): doubled batch, torchdiffeq Euler, last state kept."""
    transport = ref.create_transport(path_type="Linear", prediction="velocity", time_dist_shift=shapes.time_shift)
    sample_fn = ref.Sampler(transport).sample_ode(sampling_method="euler", num_steps=recipe.sample_steps,
                                                  atol=1e-6, rtol=1e-3, reverse=False)
    null = torch.full_like(inputs.labels, shapes.num_classes)

    def run() -> None:
        with torch.no_grad(), acc.autocast():
            z = torch.cat([inputs.latents, inputs.latents], dim=0)
            y = torch.cat([inputs.labels, null], dim=0)
            if guide is None:
                kwargs = dict(y=y, cfg_scale=recipe.cfg_scale, cfg_interval=recipe.cfg_interval)
                model_fn = net.forward_with_cfg
            else:
                kwargs = dict(y=y, cfg_scale=recipe.ag_scale, cfg_interval=(0.0, 1.0),
                              additional_model_forward=guide.forward)
                model_fn = net.forward_with_autoguidance
            sample_fn(z, model_fn, **kwargs)[-1].chunk(2, dim=0)

    return run


# ---- decoding ----

def our_decode(net: nn.Module, inputs: Inputs, acc: Accelerator) -> Step:
    """Our decoding of sampled latents (inference, as ``Sample`` runs it)."""
    def run() -> None:
        with torch.inference_mode(), acc.autocast():
            net(inputs.latents)

    return run


def reference_decode_step(net: nn.Module, inputs: Inputs, acc: Accelerator) -> Step:
    """The release's decoding of sampled latents (``rae.decode`` in ``src/sample_ddp.py``)."""
    def run() -> None:
        with torch.no_grad(), acc.autocast():
            reference_decode(net, inputs.latents)

    return run
