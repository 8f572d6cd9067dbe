"""The three measurements: backbone training step, sampling, and decoder (stage-1) training step.

Each materialises its model on the device, counts the model FLOPs of one image's step with the
uncompiled module (FLOPs are linear in the batch; one image keeps the count cheap), then times ``steps`` steps after ``warmup`` (where ``torch.compile`` compiles).
"""
from __future__ import annotations

import gc
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from rae.accelerator import Accelerator
from rae.backbones.base import Backbone
from rae.bench.flops import count_flops
from rae.bench.memory import PeakMemory
from rae.bench.models import materialize
from rae.bench.timing import time_steps
from rae.decoders.base import Decoder
from rae.sampling.cfg import ClassifierFreeGuidance
from rae.sampling.fixed_step import EulerSampler
from rae.train.optim import make_adamw
from rae.train.step import optimizer_step
from rae.transport.transport import TrainingPoint, Transport


@dataclass
class Options:
    """How to measure: batch, steps, precision (the accelerator's autocast), compile, sampling grid."""

    batch_size: int = 8
    steps: int = 10
    warmup: int = 2
    compile: bool = False
    sample_steps: int = 50
    guidance_scale: float = 1.0
    lr: float = 1e-4
    grad_clip: float | None = 1.0


@dataclass
class Result:
    """One measurement; ``flops_per_image`` are model FLOPs (forward+backward for training)."""

    what: str
    batch_size: int
    steps: int
    seconds: float
    images_per_s: float
    flops_per_image: float
    achieved_flops: float
    mfu: float
    peak_memory_mib: float
    memory_kind: str
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _result(what: str, opt: Options, seconds: float, flops_per_image: float, peak_flops: float,
            memory: PeakMemory, **extra: Any) -> Result:
    images_per_s = opt.batch_size * opt.steps / seconds
    achieved = images_per_s * flops_per_image
    return Result(what, opt.batch_size, opt.steps, seconds, images_per_s, flops_per_image, achieved,
                  achieved / peak_flops, memory.peak_mib, memory.kind, extra)


def _maybe_compile(module: nn.Module, opt: Options) -> Callable[..., torch.Tensor]:
    return torch.compile(module) if opt.compile else module


def _train_step(module: Callable[..., torch.Tensor], params: list[nn.Parameter], loss_fn: Callable[..., torch.Tensor],
                acc: Accelerator, opt: Options) -> Callable[[], None]:
    """forward + backward under the accelerator's autocast, then clip + AdamW (fused on CUDA and the CPU)."""
    optimizer = make_adamw(params, opt.lr)

    def step() -> None:
        with acc.autocast():
            loss = loss_fn(module)
        loss.backward()
        optimizer_step(optimizer, params, opt.grad_clip)

    return step


def _forward_backward(model: nn.Module, loss: Callable[[], torch.Tensor], acc: Accelerator) -> Callable[[], None]:
    """One forward + backward without an optimiser step (what the FLOP count sees), gradients dropped."""
    def run() -> None:
        with acc.autocast():
            value = loss()
        value.backward()
        model.zero_grad(set_to_none=True)

    return run


def _release(*modules: nn.Module) -> None:
    """Free a measurement's model before the next one (its memory must not count there)."""
    for module in modules:
        module.to("meta")
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def bench_train(backbone: Backbone, transport: Transport, acc: Accelerator, opt: Options,
                peak_flops: float) -> Result:
    """Images/s of the diffusion training step on random latents of the backbone's shape."""
    device = acc.device
    with PeakMemory(device) as memory:
        model = materialize(backbone, device).train()
        params = [p for p in model.parameters() if p.requires_grad]
        x0 = torch.randn(opt.batch_size, *model.latent_shape, device=device)
        y = torch.randint(0, model.num_classes, (opt.batch_size,), device=device)
        point = transport.draw(x0)

        def loss_fn(net: Callable[..., torch.Tensor], n: int = opt.batch_size) -> torch.Tensor:
            part = TrainingPoint(point.x0[:n], point.noise[:n], point.t[:n], point.x_t[:n])
            return transport.loss(net(part.x_t, part.t, y[:n]), part).mean()

        flops = count_flops(_forward_backward(model, lambda: loss_fn(model, 1), acc))
        step = _train_step(_maybe_compile(model, opt), params, loss_fn, acc, opt)
        seconds = time_steps(step, opt.steps, opt.warmup, device)
    _release(model)
    return _result("train", opt, seconds, flops, peak_flops, memory)


def bench_sample(backbone: Backbone, transport: Transport, acc: Accelerator, opt: Options,
                 peak_flops: float) -> Result:
    """Images/s of sampling with Euler over ``sample_steps`` grid points; CFG doubles the batch in one forward."""
    device = acc.device
    shape = tuple(backbone.latent_shape)
    sampler = EulerSampler(num_steps=opt.sample_steps, shift=transport.shift(shape))
    guidance = ClassifierFreeGuidance(scale=opt.guidance_scale)
    evaluations = opt.sample_steps - 1
    with PeakMemory(device) as memory:
        model = materialize(backbone, device).eval()
        noise = torch.randn(opt.batch_size, *shape, device=device)
        y = torch.randint(0, model.num_classes, (opt.batch_size,), device=device)
        t = torch.full((opt.batch_size,), 0.5, device=device)

        def velocity_of(net: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
            return guidance.velocity_fn(net, to_velocity=transport.velocity, num_classes=model.num_classes)

        def one_evaluation() -> None:
            with torch.no_grad(), acc.autocast():
                velocity_of(model)(noise[:1], t[:1], y[:1])

        flops = count_flops(one_evaluation) * evaluations
        compiled = _maybe_compile(model, opt)
        if opt.compile:  # as_velocity refuses modules in training mode; the compiled wrapper is one too
            compiled.eval()
        velocity = velocity_of(compiled)

        @torch.no_grad()
        def sample() -> None:
            with acc.autocast():
                sampler.sample(velocity, noise, y)

        seconds = time_steps(sample, opt.steps, opt.warmup, device)
    _release(model)
    return _result("sample", opt, seconds, flops, peak_flops, memory, model_evaluations=evaluations,
                   guidance_scale=opt.guidance_scale, cfg_batch=2 * opt.batch_size if opt.guidance_scale != 1.0
                   else opt.batch_size)


def bench_decoder(decoder: Decoder, acc: Accelerator, opt: Options, peak_flops: float) -> Result:
    """Images/s of the decoder's training step: random latents -> pixels, L1 to random targets, AdamW.

    Only the decoder: the frozen encoder, LPIPS and the GAN of RAE's stage 1 are not included.
    """
    device = acc.device
    with PeakMemory(device) as memory:
        model = materialize(decoder, device).train()
        params = [p for p in model.parameters() if p.requires_grad]
        latents = torch.randn(opt.batch_size, model.in_channels, *model.token_grid, device=device)
        target = torch.randn(opt.batch_size, model.out_channels, *model.image_size, device=device)

        def loss_fn(net: Callable[..., torch.Tensor], n: int = opt.batch_size) -> torch.Tensor:
            return F.l1_loss(net(latents[:n]).float(), target[:n])

        flops = count_flops(_forward_backward(model, lambda: loss_fn(model, 1), acc))
        step = _train_step(_maybe_compile(model, opt), params, loss_fn, acc, opt)
        seconds = time_steps(step, opt.steps, opt.warmup, device)
    _release(model)
    return _result("decoder", opt, seconds, flops, peak_flops, memory,
                   image_size=list(decoder.image_size))
