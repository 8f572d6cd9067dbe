"""`stage2`: train a diffusion backbone with the transport on autoencoder latents (RAE Sec. 4; REPA).

Data: a latent cache (``latents = @dataset.latent_cache()``; the encoder never runs), or images
(``dataset = ...``) encoded on the fly by ``autoencoder``; REPA's alignment needs the images (its
target encoders see them), which ``dataset`` gives and latent data may give with its latents
(``coco_features``: REPA's MS-COCO latents, captions and crops). The condition y is whatever the
data yields: class labels, or caption contexts for a text-conditioned backbone (MMDiT;
`rae.conditions`). One optimiser step:
  1. this rank's share of the global batch -> latents x0 (encoded without gradient from images);
  2. t, noise and condition dropout (labels to the null label, contexts to the empty caption's)
     drawn once for the whole global batch (`GlobalBatchDraws`), so
     that any number of ranks and any split into
     micro-batches computes exactly the gradient of the whole batch;
  3. per micro-batch: backbone(x_t, t, y) -> transport loss [+ proj_coeff * alignment loss of the
     tokens after block ``alignment.encoder_depth``], backward weighted by its share;
  4. gradient clipping, AdamW, lr schedule, EMA.
`TrainingSession` logs, checkpoints and resumes around it; every ``sample_every`` steps the EMA
model samples a grid with a few Euler steps, decoded by the autoencoder.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rae.accelerator import Accelerator
from rae.backbones.base import Backbone
from rae.conditions import (
    LABEL, BatchContextDropout, BatchLabelDropout, CaptionData, Captions, check_condition, check_context_width,
    condition_dropout, data_condition,
)
from rae.data.base import LabelledImages
from rae.data.latent_cache import LatentCache
from rae.experiments.base import RunContext
from rae.experiments.online_fid import OnlineFID
from rae.experiments.trainer import Trainer
from rae.registry import EXPERIMENTS
from rae.sampling.fixed_step import EulerSampler
from rae.sampling.guidance import NoGuidance
from rae.tracking.tracker import Tracker
from rae.train.data_stream import DataStream, to_device
from rae.train.distributed import (
    STRATEGIES,
    ShardedModuleState,
    ShardedOptimizerState,
    copy_whole_into,
    follow_training,
    whole,
    wrap_for_training,
)
from rae.train.draws import StepDraws
from rae.train.ema import EMA
from rae.train.options import OptimOptions
from rae.train.session import RunSetting
from rae.train.step import MicroBatch, accumulate_gradients, optimizer_step, split_batch
from rae.transport.transport import TrainingPoint, Transport

EMA_FILE = "ema.pt"


# ---------------------------------------------------------------------------------------------
# What one step trains
# ---------------------------------------------------------------------------------------------
class Denoiser(nn.Module):
    """The trained modules of a step: the backbone, plus the alignment loss (REPA's projectors).

    One module, so that DDP averages the gradients of both. ``forward`` returns the backbone's
    prediction, the weighted alignment loss (None without alignment) and its metrics.
    """

    def __init__(self, backbone: Backbone, alignment: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.alignment = alignment

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor, images: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
        if self.alignment is None:
            return self.backbone(x_t, t, y), None, {}
        out, tokens = self.backbone(x_t, t, y, return_tokens_at=self.alignment.encoder_depth)
        align, metrics = self.alignment(tokens, images)
        return out, align, metrics


class GlobalBatchDraws:
    """t, noise and condition-dropout draws of the whole global batch; this rank keeps its own rows
    (`rae.train.draws`), so any number of ranks trains as one process with the same global batch."""

    def __init__(self, transport: Transport, drop: BatchLabelDropout | BatchContextDropout, seed: int,
                 accelerator: Accelerator, global_batch: int) -> None:
        self.transport = transport
        self.drop = drop
        self.seed = seed
        self.accelerator = accelerator
        self.global_batch = global_batch

    def __call__(self, x0: torch.Tensor, y: torch.Tensor, step: int) -> tuple[TrainingPoint, torch.Tensor]:
        draws = StepDraws(self.seed, step, self.accelerator, self.global_batch)
        t = draws.keep(self.transport.sample_time(self.global_batch, x0.shape[1:], generator=draws.generator,
                                                  device=draws.draw_device))
        noise = draws.randn(*x0.shape[1:], dtype=x0.dtype)
        point = self.transport.point(x0, noise, t)
        return point, self.drop(y, draws.rand())


class TrainableParameters:
    """Checkpoint state of a module's trainable parameters only (REPA: the projectors, not the frozen encoders)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: whole(p.detach()) for n, p in self.module.named_parameters() if p.requires_grad}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.state_dict())
        if set(state) != expected:
            raise ValueError(f"alignment state has parameters {sorted(set(state) ^ expected)} that do not match "
                             "this alignment loss; the checkpoint was written with another one")
        params = dict(self.module.named_parameters())
        for name, value in state.items():
            copy_whole_into(params[name], value)


# ---------------------------------------------------------------------------------------------
# Sample grids during training
# ---------------------------------------------------------------------------------------------
class SampleGrid:
    """Fixed noise and conditions (labels or caption contexts), integrated by the EMA model with a few
    Euler steps, decoded to images and logged with their captions.

    The noise comes from its own generator (seeded once), so every grid of a run starts from the
    same noise and sampling never moves the training random streams.
    """

    def __init__(self, transport: Transport, autoencoder: nn.Module, latent_shape: tuple[int, ...],
                 y: torch.Tensor, captions: list[str], num_steps: int, device: torch.device, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.noise = torch.randn(len(y), *latent_shape, generator=generator).to(device)
        self.y = y.to(device)
        self.captions = captions
        self.transport = transport
        self.autoencoder = autoencoder
        self.sampler = EulerSampler(num_steps=num_steps, shift=transport.shift(latent_shape))

    @torch.no_grad()
    def log(self, model: nn.Module, accelerator: Accelerator, tracker: Tracker, step: int) -> None:
        velocity = NoGuidance().velocity_fn(model, to_velocity=self.transport.velocity)
        with accelerator.autocast():
            latents = self.sampler.sample(velocity, self.noise, self.y)
            images = self.autoencoder.decode(latents)
        tracker.track_images("samples", images.float().clamp(0, 1), step, captions=self.captions)


# ---------------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------------
def check_sources(backbone: Backbone, latents: Any, dataset: Any, autoencoder: nn.Module | None,
                  alignment: nn.Module | None, online_fid: OnlineFID | None, stochastic_encode: bool) -> None:
    """Refuse a choice of data and models that stage 2 cannot train with, naming the bindings to change."""
    if (latents is None) == (dataset is None):
        raise ValueError("stage2 trains on either `latents` (a latent cache) or `dataset` (images encoded "
                         "by the autoencoder every step): give exactly one")
    if dataset is not None and autoencoder is None:
        raise ValueError("stage2.dataset holds images: give stage2.autoencoder to encode them")
    if alignment is not None and dataset is None and not getattr(latents, "yields_images", False):
        raise ValueError("stage2.alignment (REPA) needs images for its target encoders: give stage2.dataset "
                         "(with an autoencoder) instead of a latent cache, or latents that come with images "
                         "(@dataset.coco_features() with images = True)")
    if online_fid is not None and backbone.condition != LABEL:
        raise ValueError(f"stage2.online_fid samples class labels; {type(backbone).__name__} is conditioned on "
                         "captions: score its samples with the sample and eval experiments instead")
    if online_fid is not None and autoencoder is None:
        raise ValueError("stage2.online_fid decodes its samples: give stage2.autoencoder")
    if stochastic_encode and dataset is None:
        raise ValueError("stage2.stochastic_encode encodes images every step; it needs stage2.dataset")


@dataclass
class _Run:
    """What one stage-2 run trains with, built once by `Stage2.run`."""

    acc: Accelerator
    per_rank: int
    backbone: Backbone
    autoencoder: nn.Module | None
    alignment: nn.Module | None
    denoiser: Denoiser
    step_module: nn.Module  # the denoiser, wrapped for DDP / FSDP2 and compiled as configured
    grad_sync: Any
    ema: EMA
    params: list[nn.Parameter]
    drop: BatchLabelDropout | BatchContextDropout
    optimizer: torch.optim.Optimizer | None = None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    scaler: torch.amp.GradScaler | None = None


@EXPERIMENTS.register("stage2")
class Stage2(Trainer):
    """Train ``backbone`` on latents with ``transport`` (and optionally REPA's ``alignment``).

    Args:
      backbone: the stage-2 network, ``f(x_t, t, y) -> prediction``.
      transport: path, prediction, time schedule and shift; gives the per-sample loss.
      latents: a latent cache (``@dataset.latent_cache()``) or latents with captions and images
        (``@dataset.coco_features()``); or
      dataset: images in [0, 1] with labels (or captions: ``@dataset.embedded_captions()``), encoded by
        ``autoencoder`` every step. The data's kind of condition must be the backbone's.
      autoencoder: encodes ``dataset`` and decodes the sample grids; with ``latents`` it only decodes,
        and must be the autoencoder the cache was made with.
      alignment: REPA's loss (``@loss.repa()``): ``alignment(tokens, images) -> (proj_coeff * loss,
        {"align_loss": loss})`` with ``encoder_depth``; needs images: ``dataset``, or latent data that yields them.
      batch_size: global batch (all ranks, all micro-batches); micro_batch_size: per forward pass.
      total_steps / total_epochs: training length.
      optim: AdamW, its lr schedule, gradient clipping, the EMA decay (the EMA samples and is saved as
        ``ema.pt``) and the checkpoint cadence (`OptimOptions`; None: its defaults).
      stochastic_encode: encode with the autoencoder in training mode (SD-VAE: a fresh posterior
        sample every step, as REPA); off, RAE latents are clean (its training noise is for decoders).
      autocast_encode: encode under the run's mixed precision (faster); off, the autoencoder encodes in
        fp32 as both releases do (RAE's train.py encodes outside autocast, REPA encodes offline in fp32).
      compile: ``torch.compile`` the step's module (the EMA is built from the uncompiled one).
      parallel: under torchrun, "ddp" (replicated weights, all-reduced gradients) or "fsdp" (FSDP2:
        weights, gradients, optimiser state and the EMA sharded over the ranks; checkpoints hold
        whole state dicts, so an "fsdp" run resumes on any number of ranks, docs/distributed.md).
      num_workers: data-loading processes per rank.
      log_every, keep_checkpoints: session cadence (the checkpoint cadence is ``optim``'s).
      sample_every: steps between sample grids (0: none); sample_steps: Euler grid points;
      sample_labels: the classes in the grid (default: evenly spread over the classes, 8 of them); with
        caption data the grid shows 8 random captions of the data (`rae.conditions.Captions`).
      online_fid: FID of samples against a reference batch every so many steps, logged as
        ``online/fid_ema`` (and ``online/fid_model``), as RAE's train.py evaluates (`OnlineFID`).
    """

    kind = "stage2"

    def __init__(
        self,
        backbone: Backbone,
        transport: Transport,
        latents: LatentCache | CaptionData | None = None,
        dataset: LabelledImages | CaptionData | None = None,
        autoencoder: nn.Module | None = None,
        alignment: nn.Module | None = None,
        batch_size: int = 256,
        micro_batch_size: int | None = None,
        total_steps: int | None = None,
        total_epochs: float | None = None,
        optim: OptimOptions | None = None,
        stochastic_encode: bool = False, autocast_encode: bool = False,
        compile: bool = False,
        parallel: str = "ddp",
        num_workers: int = 4,
        log_every: int = 100,
        keep_checkpoints: int = 2,
        sample_every: int = 10000, sample_steps: int = 10,
        sample_labels: list[int] | None = None,
        online_fid: OnlineFID | None = None,
    ) -> None:
        check_sources(backbone, latents, dataset, autoencoder, alignment, online_fid, stochastic_encode)
        if parallel not in STRATEGIES:
            raise ValueError(f"stage2.parallel must be one of {STRATEGIES}, got {parallel!r}")
        self._set_training(batch_size, micro_batch_size, total_steps, total_epochs, optim, num_workers, log_every,
                           keep_checkpoints)
        self.backbone, self.transport = backbone, transport
        self.latents, self.dataset, self.autoencoder, self.alignment = latents, dataset, autoencoder, alignment
        self.stochastic_encode, self.autocast_encode = stochastic_encode, autocast_encode
        self.compile, self.parallel = compile, parallel
        self.sample_every, self.sample_steps, self.sample_labels = sample_every, sample_steps, sample_labels
        self.online_fid = online_fid
        self._check_models()

    # ---- what the runner asks ----
    def models(self) -> dict[str, nn.Module]:
        found = {"backbone": self.backbone, "autoencoder": self.autoencoder, "alignment": self.alignment,
                 "online_fid": self.online_fid, "text_encoder": getattr(self.data, "text_encoder", None)}
        return {name: model for name, model in found.items() if model is not None}

    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.backbone.latent_shape)

    @property
    def data(self) -> LatentCache | LabelledImages | CaptionData:
        """What the run trains on: the latents, or the images."""
        return self.latents if self.latents is not None else self.dataset

    @property
    def data_name(self) -> str:
        return f"stage2.{'latents' if self.latents is not None else 'dataset'} ({type(self.data).__name__})"

    def tags(self) -> list[str]:
        return [self.kind, type(self.backbone).__name__] + (["repa"] if self.alignment is not None else [])

    # ---- checks before the first step ----
    def check(self, world_size: int) -> None:
        """Config-only checks, made by the runner before the run folder (`Experiment.check`)."""
        super().check(world_size)
        if self.sample_every < 0 or self.sample_steps < 2:
            raise ValueError(f"stage2.sample_every = {self.sample_every}, sample_steps = {self.sample_steps}: expected "
                             "sample_every >= 0 (0: no grids) and sample_steps >= 2 (the Euler grid's points)")
        if self.sample_labels is not None and self.backbone.condition != LABEL:
            raise ValueError(f"stage2.sample_labels are classes, but {type(self.backbone).__name__} is conditioned on "
                             "captions: leave it unset (the grid shows captions of the data)")
        classes = self.backbone.num_classes if self.backbone.condition == LABEL else 0
        if self.sample_labels is not None and not all(0 <= label < classes for label in self.sample_labels):
            raise ValueError(f"stage2.sample_labels {self.sample_labels} must be classes the backbone embeds, "
                             f"0..{classes - 1}")

    def _check_models(self) -> None:
        """Shapes and conditions that models and data must agree on (attributes only: meta device, no I/O)."""
        check_condition(self.backbone, data_condition(self.data), self.data_name)
        shape = tuple(self.backbone.latent_shape)
        if self.autoencoder is not None and tuple(self.autoencoder.latent_shape) != shape:
            raise ValueError(f"the autoencoder makes latents {tuple(self.autoencoder.latent_shape)} but the backbone "
                             f"takes {shape}: set the backbone's in_channels / input_size to the latent shape")
        if self.alignment is None:
            return
        depth = self.alignment.encoder_depth
        if not 1 <= depth <= self.backbone.num_blocks:
            raise ValueError(f"alignment encoder_depth {depth} is outside the backbone's blocks "
                             f"1..{self.backbone.num_blocks}")
        width = getattr(getattr(self.alignment, "projectors", None), "hidden_size", None)
        if width is not None and width != self.backbone.token_width(depth):
            raise ValueError(f"the alignment projects tokens of width {width}, but the backbone's tokens after block "
                             f"{depth} have width {self.backbone.token_width(depth)}: set repa.hidden_size to it")

    def _check_run(self, acc: Accelerator, data: LatentCache | LabelledImages | CaptionData) -> int:
        """Checks that need the data or the world size; returns the per-rank batch."""
        self._check_options()
        per_rank = self._per_rank_batch(acc)
        if self.latents is not None and self.latents.latent_shape != tuple(self.backbone.latent_shape):
            raise ValueError(f"{self.data_name} holds latents {self.latents.latent_shape} but the "
                             f"backbone takes {tuple(self.backbone.latent_shape)}")
        if self.backbone.condition != LABEL:
            check_context_width(self.backbone, data, self.data_name)
        elif data.num_classes > self.backbone.num_classes:
            raise ValueError(f"the data has {data.num_classes} classes but the backbone embeds "
                             f"{self.backbone.num_classes}: set its num_classes")
        if self.sample_labels and not all(0 <= label < data.num_classes for label in self.sample_labels):
            raise ValueError(f"stage2.sample_labels {self.sample_labels} must be classes of the data, "
                             f"0..{data.num_classes - 1}")
        if self.latents is not None and self.autoencoder is not None:
            self.latents.check_autoencoder(self.autoencoder)
        return per_rank

    # ---- training ----
    def run(self, ctx: RunContext) -> dict[str, Any]:
        if self.latents is not None:
            self.latents.prepare()
        run = self._build_networks(ctx.accelerator, self._check_run(ctx.accelerator, self.data))
        stream = self._stream(ctx, self.data, run.per_rank)
        session = self._open_session(ctx, self._build_optimizer(run, stream), stream)
        ctx.log.info("stage2: %d steps of %d images (%d per rank), %d steps per epoch", session.total_steps,
                     self.batch_size, run.per_rank, stream.batches_per_epoch)
        grid = self._sample_grid(ctx, self.data, every_rank=self._sharded(run.acc))
        draws = GlobalBatchDraws(self.transport, run.drop, ctx.seed, run.acc, self.batch_size)
        if session.step == 0:
            self._online_fid(ctx, run, session.step)
        while not session.done:
            batch = self._prepare_batch(run, draws, session.step, next(stream))
            metrics = self._train_step(run, batch, session.step)
            session.end_step(metrics, images=self.batch_size,
                             scalars={"lr": run.scheduler.get_last_lr()[0], "epoch": session.images / len(self.data)})
            if grid is not None and (session.step % self.sample_every == 0 or session.done):
                grid.log(run.ema.model, run.acc, ctx.tracker, session.step)
            self._online_fid(ctx, run, session.step)
        ema_state = ShardedModuleState(run.ema.model).state_dict() if self.parallel == "fsdp" else run.ema.model.state_dict()
        return self._finish(ctx, session, ema_state, EMA_FILE, "ema")

    def _sharded(self, acc: Accelerator) -> bool:
        """Whether the weights are sharded over the ranks (FSDP2 under torchrun)."""
        return acc.distributed and self.parallel == "fsdp"

    def _build_networks(self, acc: Accelerator, per_rank: int) -> _Run:
        """The models on the device; the EMA copied before the denoiser is wrapped (a sharded module
        cannot be deep-copied), then given the same start and sharding."""
        backbone = self.backbone.to(acc.device).train()
        drop = condition_dropout(backbone, self.data)
        autoencoder = (self.autoencoder.to(acc.device).train(self.stochastic_encode)
                       if self.autoencoder is not None else None)
        alignment = self.alignment.to(acc.device).train() if self.alignment is not None else None
        denoiser = Denoiser(backbone, alignment)
        ema = EMA(backbone, self.optim.ema_decay)
        step_module, grad_sync = wrap_for_training(denoiser, acc, self.parallel)
        follow_training(ema.model, acc, self.parallel)
        if self.compile:
            step_module = torch.compile(step_module)
        params = [p for p in denoiser.parameters() if p.requires_grad]
        return _Run(acc, per_rank, backbone, autoencoder, alignment, denoiser, step_module, grad_sync, ema, params, drop)

    def _build_optimizer(self, run: _Run, stream: DataStream) -> dict[str, Any]:
        """AdamW, its schedule and (fp16) the loss scaler; returns the state a checkpoint holds."""
        run.optimizer = self.optim.optimizer(run.params)
        run.scheduler = self.optim.scheduler(run.optimizer, stream.batches_per_epoch, self._total_steps(stream))
        run.scaler = torch.amp.GradScaler(run.acc.device.type) if run.acc.precision == "fp16" else None
        state: dict[str, Any] = {"backbone": run.backbone, "ema": run.ema, "optimizer": run.optimizer,
                                 "scheduler": run.scheduler, "data": stream,
                                 "parallel": RunSetting("stage2.parallel", self.parallel)}
        if self.parallel == "fsdp":  # whole tensors, the optimiser's keyed by name: resumable on any number of ranks
            state |= {"backbone": ShardedModuleState(run.backbone), "ema": ShardedModuleState(run.ema),
                      "optimizer": ShardedOptimizerState(run.denoiser, run.optimizer)}
        if run.alignment is not None:
            state["alignment"] = TrainableParameters(run.alignment)
        if run.scaler is not None:
            state["scaler"] = run.scaler
        return state

    def _prepare_batch(self, run: _Run, draws: GlobalBatchDraws, step: int, data: Any) -> tuple[torch.Tensor, ...]:
        """The step's batch: clean latents (encoded from images, or read), time, noise, noised latents
        and conditions after dropout (all drawn for the whole global batch), plus REPA's images."""
        x, y, *with_latents = to_device(data, run.acc.device)  # latent data may add the images
        images = x if self.latents is None else next(iter(with_latents), None)
        x0 = self._encode(run.autoencoder, x, run.acc) if self.latents is None else x.float()
        point, y = draws(x0, y, step + 1)
        batch = (point.x0, point.noise, point.t, point.x_t, y)
        return batch + (images,) if run.alignment is not None else batch

    def _train_step(self, run: _Run, batch: tuple[torch.Tensor, ...], step: int) -> dict[str, torch.Tensor]:
        """Gradients of the batch's loss over its micro-batches, clipping, AdamW, the schedule, the EMA."""
        metrics = accumulate_gradients(
            lambda mb: self._loss(run.step_module, mb), split_batch(batch, self.micro_batch_size), run.acc,
            ddp_module=run.grad_sync, scaler=run.scaler, step=step + 1,
        )
        metrics["grad_norm"] = optimizer_step(run.optimizer, run.params, self.optim.grad_clip, run.scaler)
        run.acc.mark_step()
        run.scheduler.step()
        run.ema.update(run.backbone)
        return metrics

    def _loss(self, module: nn.Module, mb: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One micro-batch's mean loss: diffusion (+ the weighted alignment), each also as a metric."""
        x0, noise, t, x_t, y, *images = mb
        out, align, parts = module(x_t, t, y, *images)
        diffusion = self.transport.loss(out, TrainingPoint(x0, noise, t, x_t)).mean()
        metrics = {"loss/diffusion": diffusion.detach()}
        if align is None:
            return diffusion, metrics
        metrics["loss/alignment"] = parts["align_loss"]
        return diffusion + align, metrics

    @torch.no_grad()
    def _encode(self, autoencoder: nn.Module, images: torch.Tensor, acc: Accelerator) -> torch.Tensor:
        """Images -> float32 latents, in chunks of the micro-batch (the encoder's memory is that of a forward)."""
        chunks = images.split(self.micro_batch_size or images.shape[0])
        with acc.autocast() if self.autocast_encode else contextlib.nullcontext():
            return torch.cat([autoencoder.encode(chunk).float() for chunk in chunks])

    def _online_fid(self, ctx: RunContext, run: _Run, step: int) -> None:
        """Score the EMA and the live model with the online FID when it is due at ``step`` (every rank
        samples its share)."""
        if self.online_fid is None or not self.online_fid.due(step):
            return
        models = {"ema": run.ema.model, "model": run.backbone}
        scores = self.online_fid.evaluate(models, self.autoencoder, self.transport, ctx.accelerator, ctx.seed,
                                          ctx.log)
        for name, value in scores.items():
            ctx.tracker.track(f"online/{name}", value, step)

    def _sample_grid(self, ctx: RunContext, data: LatentCache | LabelledImages | CaptionData,
                     every_rank: bool) -> SampleGrid | None:
        """The main rank's grid; with ``every_rank`` (a sharded EMA, whose forward is a collective)
        every rank samples it and the main rank logs it."""
        if self.autoencoder is None or self.sample_every <= 0 or not (ctx.accelerator.is_main or every_rank):
            if self.autoencoder is None and ctx.accelerator.is_main:
                ctx.log.info("stage2: no autoencoder given, so no sample grids")
            return None
        shape = tuple(self.backbone.latent_shape)
        if self.backbone.condition == LABEL:
            labels = self.sample_labels or [(i * data.num_classes) // 8 for i in range(8)]
            y, captions = torch.tensor(labels), [f"class {label}" for label in labels]
        else:
            _, y, _, captions = Captions(data, ctx.seed).draw(ctx.seed, range(8), shape)
        return SampleGrid(self.transport, self.autoencoder, shape, y, captions,
                          self.sample_steps, ctx.accelerator.device, ctx.seed)
