"""`stage1`: train the RAE decoder on a frozen encoder's noised latents (RAE Sec. 3, stage 1).

One optimiser step over this rank's share of the global batch:
  1. images -> clean latents (frozen encoder, no gradient), then the training noise of the
     autoencoder (``noise_tau``) and every DiffAugment draw, all drawn once for the whole global
     batch from a generator seeded by (seed, step) (`rae.train.draws`), each rank keeping its rows;
  2. G: per micro-batch, recon = decoder(noised latents); L1 + lpips_weight * LPIPS backpropagates
     into ``.grad``; the generator loss -E[D(diffaug(recon))] goes into a separate gradient buffer;
  3. adaptive weight = ||grad rec|| / ||grad gan|| at ``decoder.last_layer`` from the whole batch's
     gradients (all ranks), clamped to [0, cap]; grad += weight * disc_weight * gan grad; AdamW, EMA;
  4. D (from ``disc_start_epoch``), as RAE's ``src/train_stage1.py``: fresh reconstructions by the
     UPDATED decoder in eval mode from the CLEAN latents (eval mode: no noise augmentation), without
     gradient, clamped and rounded to 8 bits (`quantize_8bit`); hinge loss on diffaug(images) vs
     diffaug(fakes); the heads' own AdamW, whose schedule is stepped only on D updates (so D's
     warmup and decay start when D does, as the release steps its D scheduler).

D's spectral norm: the release runs D on the fakes, then on the reals, as two forwards with the
heads in train mode, and each forward runs one power iteration of every head convolution, so the
fake logits use the weights after one iteration and the real logits after two. Here the D loss,
a sum of a fake term and a real term (`DiscLossTerms`), is computed in two passes the same way:
one iteration, every micro-batch's fakes with the heads in eval mode (u, v fixed), a second
iteration, every micro-batch's reals. That is the release's numbers for one batch, and the same
for any split into micro-batches (the release, iterating on every forward, would differ by split).
The count of iterations barely moves D's outputs (every head convolution but the last feeds a
per-sample normalisation, which cancels the scale 1/sigma up to its eps, and the last one is
1 x C, whose sigma one iteration finds exactly) but it sets the u, v that checkpoints hold. By
the same argument the spectral norm's start (the release's older hook draws random u, v; torch's
parametrization here runs 15 iterations when built) only matters to a G step that comes before
D's first update, which the paper's schedule (D from epoch 6, G's GAN loss from 8) never has.

Batch equivalence (any split into micro-batches or ranks): random draws happen per global batch,
losses are means weighted by share, the adaptive weight uses gradients summed over micro-batches
and averaged over ranks (the reference computes it per micro-batch and per rank), and D's
gradients are averaged over ranks (the release's D step calls the discriminator module, not its
DDP wrapper, so its D gradients are not averaged over ranks).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.nn.utils import parametrize

from rae.accelerator import Accelerator
from rae.autoencoder.rae import RAE
from rae.data.base import LabelledImages
from rae.encoders.tokens import tokens_to_latent
from rae.experiments.base import RunContext, count_parameters
from rae.experiments.trainer import Trainer
from rae.losses.diffaug import DiffAugment, color, cutout, translate
from rae.losses.discriminator import DinoDiscriminator
from rae.losses.gan import D_LOSS_TERMS, DiscLossTerms, quantize_8bit, vanilla_g_loss
from rae.losses.perceptual import LPIPS
from rae.registry import EXPERIMENTS
from rae.tracking.tracker import Tracker
from rae.train.data_stream import DataStream, to_device
from rae.train.distributed import wrap_for_training
from rae.train.draws import StepDraws
from rae.train.ema import EMA
from rae.train.options import OptimOptions
from rae.train.session import TrainingSession
from rae.train.step import MicroBatch, accumulate_gradients, optimizer_step, split_batch
from rae.weights import load_pretrained_weights

EMA_FILE = "decoder_ema.pt"
Augment = Callable[[torch.Tensor, int], torch.Tensor]  # (images, their first index in the batch) -> augmented
D_METRICS = ("loss/disc", "disc/logits_fake", "disc/logits_real", "disc_grad_norm")  # zeros before D starts
ADAPTIVE_EPS = 1e-6  # as rae.losses.adaptive_weight


# ---------------------------------------------------------------------------------------------
# Pieces of a step
# ---------------------------------------------------------------------------------------------
class BatchAugment:
    """DiffAugment with its draws made once for the whole global batch and applied to any slice of
    this rank's share of it.

    DiffAugment draws (B, ...) parameters per call, so augmenting micro-batches (or ranks' shares)
    separately would differ from augmenting the batch; here the same per-sample parameters follow
    each image, whichever rank and micro-batch it lands in.
    """

    def __init__(self, aug: DiffAugment, draws: StepDraws) -> None:
        self.aug = aug
        self.use = (draws.shared_rand(3) < aug.prob).tolist()
        self.r = draws.rand(7).T[:, :, None, None]

    def __call__(self, images: torch.Tensor, start: int) -> torch.Tensor:
        """Augment ``images``, the batch's samples ``start .. start + len(images)``, in [0, 1]."""
        if self.aug.prob == 0.0:
            return images
        r = self.r[:, start:start + images.shape[0]]
        x = images.float() * 2.0 - 1.0
        if self.use[0] and self.aug.translation > 0:
            x = translate(x, self.aug.translation, r[0], r[1])
        if self.use[1] and self.aug.color:
            x = color(x, r[2], r[3], r[4])
        if self.use[2] and self.aug.cutout > 0:
            x = cutout(x, self.aug.cutout, r[5], r[6])
        return ((x + 1.0) / 2.0).to(images.dtype)


def all_reduce_mean(tensors: list[torch.Tensor], acc: Accelerator) -> None:
    """Average tensors over ranks in place (gradients that DDP does not reduce)."""
    if not acc.distributed:
        return
    for t in tensors:
        dist.all_reduce(t)
        t.div_(acc.world_size)


def power_iteration(heads: nn.Module) -> None:
    """One spectral-norm power iteration of every head convolution, then eval mode (u, v fixed):
    what one forward of the heads in train mode does to them before using the weights."""
    heads.train()
    with torch.no_grad():
        for module in heads.modules():
            if parametrize.is_parametrized(module, "weight"):
                module.weight  # noqa: B018  (reading the weight in train mode runs the iteration)
    heads.eval()


# ---------------------------------------------------------------------------------------------
# Reconstruction grids during training
# ---------------------------------------------------------------------------------------------
class ReconstructionGrid:
    """The dataset's first images next to their EMA reconstructions (clean latents, no noise)."""

    def __init__(self, dataset: LabelledImages, count: int, device: torch.device) -> None:
        items = [dataset[i] for i in range(min(count, len(dataset)))]
        self.images = torch.stack([image for image, _ in items]).to(device)
        self.labels = [int(label) for _, label in items]

    @torch.no_grad()
    def log(self, autoencoder: RAE, ema_decoder: nn.Module, acc: Accelerator, tracker: Tracker, step: int) -> None:
        with acc.autocast():
            z = autoencoder.normalize(tokens_to_latent(autoencoder.encoder(self.images),
                                                       autoencoder.encoder.token_grid))
            recon = autoencoder.decode(z, ema_decoder)
        grid = torch.cat([self.images, recon.float().clamp(0, 1)])
        captions = ([f"original, class {c}" for c in self.labels]
                    + [f"EMA reconstruction, class {c}" for c in self.labels])
        tracker.track_images("reconstructions", grid, step, captions=captions)


# ---------------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------------
@dataclass
class _Run:
    """What one stage-1 run trains with, built once by `Stage1.run`."""

    acc: Accelerator
    ae: RAE
    decoder: nn.Module
    step_decoder: nn.Module  # the decoder, or its DDP wrapper
    grad_sync: DistributedDataParallel | None
    ema: EMA
    params: list[nn.Parameter]
    lpips: LPIPS | None
    disc: DinoDiscriminator | None
    per_rank: int
    optimizer: torch.optim.Optimizer | None = None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    d_optimizer: torch.optim.Optimizer | None = None
    d_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    starts: dict[str, int] = field(default_factory=dict)


@dataclass
class _Batch:
    """One step's images, their clean latents (D's fakes) and noised ones (G's input), and the step's
    three DiffAugment draws (G's view of the fakes, D's of the reals, D's of the fakes)."""

    images: torch.Tensor
    clean: torch.Tensor
    noised: torch.Tensor
    augments: list[BatchAugment]


@EXPERIMENTS.register("stage1")
class Stage1(Trainer):
    """Train the decoder of ``autoencoder`` (its encoder frozen) to reconstruct ``dataset``.

    Args:
      autoencoder: an RAE; only its decoder trains; its ``noise_tau`` noises the training latents.
      dataset: labelled images in [0, 1] at the decoder's output size.
      lpips: the perceptual loss (``@loss.lpips()``), weighted by ``lpips_weight`` from ``lpips_start_epoch``.
      discriminator: ``@loss.dino_disc()`` (None: no GAN); diffaug: its input augmentation.
      disc_loss: "hinge" or "vanilla" for D; G uses -E[D(fake)] (RAE's "vanilla").
      disc_weight: scale of the adaptively weighted G loss, in G from ``gan_start_epoch``;
        ``adaptive_weight_cap``: clamp of the adaptive weight; D updates from ``disc_start_epoch``.
      batch_size: global batch; micro_batch_size: per forward pass; total_steps / total_epochs: length.
      optim: the decoder's AdamW, schedule, clipping, EMA decay (the EMA is saved as ``decoder_ema.pt``,
        loadable by ``rae.decoder_path``) and checkpoint cadence (`OptimOptions`; None: its defaults).
      disc_optim: the heads' AdamW, schedule and clipping (None: ``optim``'s, as RAE's release); their
        schedule counts D updates (step 0 at ``disc_start_epoch``); its EMA decay and cadence are unused.
      num_workers, log_every, keep_checkpoints: as stage2.
      grid_every: steps between reconstruction grids (0: none); grid_size: images in a grid.

    Logged besides the losses: ``lr`` (the decoder's, after the step's scheduler step, as the release
    logs it), ``disc_lr`` (the lr the step's D update used), D's mean logits and gradient norms.
    """

    kind = "stage1"

    def __init__(
        self,
        autoencoder: RAE,
        dataset: LabelledImages,
        lpips: LPIPS | None = None,
        discriminator: DinoDiscriminator | None = None,
        diffaug: DiffAugment | None = None,
        disc_loss: str = "hinge",
        lpips_weight: float = 1.0, disc_weight: float = 0.75, adaptive_weight_cap: float = 1e4,
        lpips_start_epoch: float = 0.0, disc_start_epoch: float = 6.0, gan_start_epoch: float = 8.0,
        batch_size: int = 512,
        micro_batch_size: int | None = None,
        total_steps: int | None = None,
        total_epochs: float | None = None,
        optim: OptimOptions | None = None,
        disc_optim: OptimOptions | None = None,
        num_workers: int = 4,
        log_every: int = 100,
        keep_checkpoints: int = 2,
        grid_every: int = 5000, grid_size: int = 8,
    ) -> None:
        if disc_loss not in D_LOSS_TERMS:
            raise ValueError(f"stage1.disc_loss must be one of {sorted(D_LOSS_TERMS)}, got {disc_loss!r}")
        if lpips_weight > 0 and lpips is None:
            raise ValueError(f"stage1.lpips_weight is {lpips_weight}: give stage1.lpips = @loss.lpips() (or weight 0)")
        if discriminator is not None and diffaug is None:
            raise ValueError("stage1.discriminator needs stage1.diffaug (@loss.diffaug(); prob 0 switches it off)")
        self._set_training(batch_size, micro_batch_size, total_steps, total_epochs, optim, num_workers, log_every,
                           keep_checkpoints)
        self.disc_optim = disc_optim if disc_optim is not None else self.optim
        self.autoencoder, self.dataset = autoencoder, dataset
        self.lpips, self.discriminator, self.diffaug = lpips, discriminator, diffaug
        self.disc_loss: DiscLossTerms = D_LOSS_TERMS[disc_loss]
        self.lpips_weight, self.disc_weight, self.adaptive_weight_cap = lpips_weight, disc_weight, adaptive_weight_cap
        self.starts = {"lpips": lpips_start_epoch, "disc": disc_start_epoch, "gan": gan_start_epoch}
        self.grid_every, self.grid_size = grid_every, grid_size
        self._check_models()

    # ---- what the runner asks ----
    def models(self) -> dict[str, nn.Module]:
        found = {"encoder": self.autoencoder.encoder, "decoder": self.autoencoder.decoder, "lpips": self.lpips,
                 "discriminator": self.discriminator}
        return {name: model for name, model in found.items() if model is not None}

    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.autoencoder.latent_shape)

    def tags(self) -> list[str]:
        return [self.kind, type(self.autoencoder.encoder).__name__] + (["gan"] if self.discriminator else [])

    def load_weights(self, allow_random: bool, log: Any) -> None:
        """The encoder, latent stats and decoder checkpoint (via the RAE), LPIPS and the DINO trunk."""
        for model in (self.autoencoder, self.lpips, self.discriminator):
            if model is not None:
                load_pretrained_weights(model, allow_random=allow_random, log=log)

    # ---- checks before the first step ----
    def check(self, world_size: int) -> None:
        """Config-only checks, made by the runner before the run folder (`Experiment.check`)."""
        super().check(world_size)
        if self.grid_every < 0 or self.grid_size < 1:
            raise ValueError(f"stage1.grid_every = {self.grid_every}, grid_size = {self.grid_size}: expected "
                             "grid_every >= 0 (0: no grids) and grid_size >= 1")

    def _check_models(self) -> None:
        """Shapes that must agree (attributes only: runs on the meta device, no I/O)."""
        decoder, encoder = self.autoencoder.decoder, self.autoencoder.encoder
        size = decoder.image_size
        if size != (self.dataset.resolution, self.dataset.resolution):
            raise ValueError(
                f"the decoder makes {size[0]} x {size[1]} images (token grid {tuple(decoder.token_grid)} x patch "
                f"{decoder.patch_size}) but the dataset's images are {self.dataset.resolution} px: set the dataset's "
                f"resolution to {size[0]} or decoder.vit.patch_size to {self.dataset.resolution // decoder.token_grid[0]}"
            )
        if encoder.input_size % encoder.patch_size:
            raise ValueError(f"the encoder's input_size {encoder.input_size} is not a multiple of its patch "
                             f"{encoder.patch_size}: set it to {encoder.token_grid[0] * encoder.patch_size}")
        if count_parameters(decoder) == 0 or any(p.requires_grad for p in encoder.parameters()):
            raise ValueError("stage1 trains the decoder only: the encoder must be frozen")

    def _check_options(self) -> None:
        super()._check_options()
        if self.disc_optim is not self.optim:
            self.disc_optim.check("stage1.disc_optim")

    def _check_run(self, acc: Accelerator) -> int:
        """Checks that need the world size or the precision; returns the per-rank batch."""
        self._check_options()
        if acc.precision == "fp16":
            raise ValueError("stage1 runs in fp32 or bf16 (run.precision); fp16 loss scaling of the separate "
                             "GAN gradient is not implemented")
        return self._per_rank_batch(acc)

    # ---- training ----
    def run(self, ctx: RunContext) -> dict[str, Any]:
        run = self._build_networks(ctx.accelerator, self._check_run(ctx.accelerator))
        stream = self._stream(ctx, self.dataset, run.per_rank)
        state = self._build_optimizers(run, stream)
        session = self._open_session(ctx, state, stream)
        ctx.log.info("stage1: %d steps of %d images (%d per rank), %d steps per epoch; loss: %s", session.total_steps,
                     self.batch_size, run.per_rank, stream.batches_per_epoch, self._loss_terms(run.starts))
        grid = (ReconstructionGrid(self.dataset, self.grid_size, run.acc.device)
                if self.grid_every > 0 and run.acc.is_main else None)
        unused = self._unused_metrics()
        while not session.done:
            batch = self._prepare_batch(ctx, run, session.step, next(stream))
            metrics, scalars = self._generator_step(run, session, batch)
            metrics, scalars = self._discriminator_update(run, session.step, batch, metrics, scalars)
            session.end_step({k: v for k, v in metrics.items() if k not in unused}, images=self.batch_size,
                             scalars=scalars)
            if grid is not None and (session.step % self.grid_every == 0 or session.done):
                grid.log(run.ae, run.ema.model, run.acc, ctx.tracker, session.step)
        return self._finish(ctx, session, run.ema.model.state_dict(), EMA_FILE, "decoder_ema")

    def _build_networks(self, acc: Accelerator, per_rank: int) -> _Run:
        """The models on the device: the frozen encoder, the trained decoder (wrapped for DDP, which
        broadcasts rank 0's weights before the EMA copies them), LPIPS and the frozen discriminator."""
        ae = self.autoencoder.to(acc.device).eval()
        decoder = ae.decoder.train().requires_grad_(True)
        step_decoder, grad_sync = wrap_for_training(decoder, acc, "ddp")
        ema = EMA(decoder, self.optim.ema_decay)
        lpips = self.lpips.to(acc.device) if self.lpips is not None else None
        disc = self.discriminator.to(acc.device).eval().requires_grad_(False) if self.discriminator else None
        return _Run(acc, ae, decoder, step_decoder, grad_sync, ema, list(decoder.parameters()), lpips, disc, per_rank)

    def _build_optimizers(self, run: _Run, stream: DataStream) -> dict[str, Any]:
        """The decoder's and the heads' optimisers and schedules (the heads' stepped on D updates only),
        the loss terms' start steps; returns the state a checkpoint holds."""
        per_epoch, total_steps = stream.batches_per_epoch, self._total_steps(stream)
        run.optimizer = self.optim.optimizer(run.params)
        run.scheduler = self.optim.scheduler(run.optimizer, per_epoch, total_steps)
        state: dict[str, Any] = {"decoder": run.decoder, "ema": run.ema, "optimizer": run.optimizer,
                                 "scheduler": run.scheduler, "data": stream}
        if run.disc is not None:
            run.d_optimizer = self.disc_optim.optimizer(run.disc.heads.requires_grad_(True).parameters())
            run.d_scheduler = self.disc_optim.scheduler(run.d_optimizer, per_epoch, total_steps)
            run.disc.requires_grad_(False)  # on only inside the D step
            state |= {"disc_heads": run.disc.heads, "disc_optimizer": run.d_optimizer,
                      "disc_scheduler": run.d_scheduler}
        run.starts = {name: round(epoch * per_epoch) for name, epoch in self.starts.items()}
        return state

    def _prepare_batch(self, ctx: RunContext, run: _Run, step: int, data: Any) -> _Batch:
        """The step's images on the device, their latents and augmentations, every random draw made
        once for the whole global batch (seeded by the run's seed and the step)."""
        x, _ = to_device(data, run.acc.device)
        draws = StepDraws(ctx.seed, step + 1, run.acc, self.batch_size)
        clean, noised = self._latents(run.ae, x, run.acc, draws)
        return _Batch(x, clean, noised, [BatchAugment(self.diffaug, draws) for _ in range(3)] if run.disc else [])

    def _generator_step(self, run: _Run, session: TrainingSession,
                        batch: _Batch) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """One decoder update: reconstruction loss, the adaptively weighted GAN gradient, clipping,
        AdamW, the schedule and the EMA; returns the step's metrics and its scalars (lr, epoch)."""
        step, acc = session.step, run.acc
        use_lpips = run.lpips is not None and self.lpips_weight > 0 and step >= run.starts["lpips"]
        use_gan = run.disc is not None and step >= run.starts["gan"]
        index = torch.arange(run.per_rank)  # on the host: a micro-batch's start is read without a device sync
        gan_grads = [torch.zeros_like(p) for p in run.params] if use_gan else None
        g_fn = functools.partial(self._g_loss, run=run, lpips=run.lpips if use_lpips else None,
                                 disc=run.disc if use_gan else None, augments=batch.augments[:1], gan_grads=gan_grads)
        metrics = accumulate_gradients(g_fn, split_batch((batch.noised, batch.images, index), self.micro_batch_size),
                                       acc, ddp_module=run.grad_sync, step=step + 1)
        metrics["adaptive_weight"] = self._add_gan_gradient(run.params, gan_grads, run.decoder.last_layer, acc)
        metrics["loss"] = metrics["loss"] + metrics["adaptive_weight"] * self.disc_weight * metrics["loss/gan_g"]
        metrics["grad_norm"] = optimizer_step(run.optimizer, run.params, self.optim.grad_clip)
        run.scheduler.step()
        run.ema.update(run.decoder)
        acc.mark_step()
        return metrics, {"lr": run.scheduler.get_last_lr()[0], "epoch": session.images / len(self.dataset)}

    def _discriminator_update(self, run: _Run, step: int, batch: _Batch, metrics: dict[str, torch.Tensor],
                              scalars: dict[str, float]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """D's update on the step's images against fresh fakes of the updated decoder, from
        ``disc_start_epoch``; zeros for D's metrics before it starts (none without a discriminator)."""
        if run.disc is None:
            return metrics, scalars
        if step < run.starts["disc"]:
            return metrics | {key: torch.zeros((), device=run.acc.device) for key in D_METRICS}, scalars
        fakes = self._fresh_fakes(run.ae, run.decoder, batch.clean, run.acc)
        metrics |= discriminator_step(run.disc, run.d_optimizer, fakes, batch.images, tuple(batch.augments[1:]),
                                      self.disc_loss, self.micro_batch_size, self.disc_optim.grad_clip, run.acc)
        scalars["disc_lr"] = run.d_scheduler.get_last_lr()[0]  # the lr of this D update
        run.d_scheduler.step()
        return metrics, scalars

    def _loss_terms(self, starts: dict[str, int]) -> str:
        """The loss terms this run uses and the step each starts at, e.g. ``L1, LPIPS (weight 1) from step 0``."""
        lpips = (f"LPIPS (weight {self.lpips_weight:g}) from step {starts['lpips']}"
                 if self.lpips is not None and self.lpips_weight > 0 else "no LPIPS")
        gan = (f"D from step {starts['disc']}, GAN in G (weight {self.disc_weight:g}) from step {starts['gan']}"
               if self.discriminator is not None else "no GAN")
        return f"L1, {lpips}, {gan}"

    def _unused_metrics(self) -> set[str]:
        """Metrics of loss terms this run never uses (no LPIPS, no discriminator): left out of the log
        instead of logged as zeros at every step."""
        unused = set()
        if self.lpips is None or self.lpips_weight <= 0:
            unused.add("loss/lpips")
        if self.discriminator is None:
            unused |= {"loss/gan_g", "adaptive_weight"}
        return unused

    @torch.no_grad()
    def _latents(self, ae: RAE, images: torch.Tensor, acc: Accelerator,
                 draws: StepDraws) -> tuple[torch.Tensor, torch.Tensor]:
        """Images -> normalised float32 latents, clean (for D's fakes) and with the training noise
        (for G), the noise drawn for the whole global batch."""
        chunks = images.split(self.micro_batch_size or images.shape[0])
        with acc.autocast():
            z = torch.cat([tokens_to_latent(ae.encoder(c), ae.encoder.token_grid).float() for c in chunks])
        noised = ae.noised(z, draws.rand(*([1] * (z.dim() - 1))), draws.randn(*z.shape[1:])) if ae.noise_tau > 0 else z
        return ae.normalize(z), ae.normalize(noised)

    @torch.no_grad()
    def _fresh_fakes(self, ae: RAE, decoder: nn.Module, clean: torch.Tensor, acc: Accelerator) -> torch.Tensor:
        """D's fakes as the release makes them after the G step: the updated decoder in eval mode on the
        clean latents, no gradient, in float32, clamped to [0, 1] and rounded to 8 bits."""
        decoder.eval()
        with acc.autocast():
            recon = torch.cat([ae.decode(z, decoder).float()
                               for z in clean.split(self.micro_batch_size or clean.shape[0])])
        decoder.train()
        return quantize_8bit(recon)

    def _g_loss(self, mb: MicroBatch, run: _Run, lpips: LPIPS | None, disc: DinoDiscriminator | None,
                augments: list[BatchAugment], gan_grads: list[torch.Tensor] | None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """A micro-batch's reconstruction loss (returned for backward); its GAN gradient goes to ``gan_grads``."""
        z, x, index = mb
        recon = run.ae.decode(z, run.step_decoder)
        l1 = (recon.float() - x).abs().mean()
        zero = l1.new_zeros(())
        perceptual = lpips(recon.float(), x).mean() if lpips is not None else zero
        metrics = {"loss/l1": l1.detach(), "loss/lpips": perceptual.detach(), "loss/gan_g": zero}
        if disc is not None:
            gan = vanilla_g_loss(disc(augments[0](recon, int(index[0]))))
            share = x.shape[0] / run.per_rank
            for buffer, grad in zip(gan_grads, torch.autograd.grad(gan.float() * share, run.params, retain_graph=True)):
                buffer.add_(grad)
            metrics["loss/gan_g"] = gan.detach().float()
        return l1 + self.lpips_weight * perceptual, metrics

    def _add_gan_gradient(self, params: list[nn.Parameter], gan_grads: list[torch.Tensor] | None,
                          last_layer: nn.Parameter, acc: Accelerator) -> torch.Tensor:
        """grad += w * disc_weight * GAN grad, w = ||rec grad|| / (||GAN grad|| + eps) at the last layer,
        in float32 from the whole global batch's gradients, clamped to [0, cap]; returns w (0 without GAN)."""
        if gan_grads is None:
            return torch.zeros((), device=last_layer.device)
        all_reduce_mean(gan_grads, acc)
        last = next(i for i, p in enumerate(params) if p is last_layer)
        weight = last_layer.grad.float().norm() / (gan_grads[last].float().norm() + ADAPTIVE_EPS)
        weight = weight.clamp(0.0, self.adaptive_weight_cap)
        for p, grad in zip(params, gan_grads):
            p.grad.add_(grad * (weight * self.disc_weight))
        return weight


def discriminator_step(disc: DinoDiscriminator, optimizer: torch.optim.Optimizer, fakes: torch.Tensor,
                       reals: torch.Tensor, augments: tuple[Augment, Augment], loss: DiscLossTerms,
                       micro_batch_size: int | None, grad_clip: float | None,
                       acc: Accelerator) -> dict[str, torch.Tensor]:
    """One update of D's heads on this rank's ``reals`` vs ``fakes`` (``augments``: the reals', the fakes';
    each called as ``augment(images, start)`` with the images' first index in the batch).

    As the release's ``discriminator(fake, real)`` with the heads in train mode: a power iteration,
    D on the fakes, a second power iteration, D on the reals (see the module doc); each pass over
    all micro-batches, its loss term weighted by share; gradients averaged over ranks.
    """
    disc.requires_grad_(True)
    index = torch.arange(reals.shape[0])  # on the host: a micro-batch's start is read without a device sync
    metrics: dict[str, torch.Tensor] = {}
    passes = (("fake", fakes, augments[1], loss.fake), ("real", reals, augments[0], loss.real))
    for side, images, augment, term in passes:
        power_iteration(disc.heads)
        part = accumulate_gradients(functools.partial(_d_term, disc, augment, term, side),
                                    split_batch((images, index), micro_batch_size), acc)
        metrics["loss/disc"] = metrics.get("loss/disc", 0.0) + part.pop("loss")
        metrics |= part
    heads = [p for p in disc.heads.parameters() if p.grad is not None]
    all_reduce_mean([p.grad for p in heads], acc)
    metrics["disc_grad_norm"] = optimizer_step(optimizer, heads, grad_clip)
    disc.requires_grad_(False)
    return metrics


def _d_term(disc: DinoDiscriminator, augment: Augment, term: Callable[[torch.Tensor], torch.Tensor],
            side: str, mb: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One side's D loss term on a micro-batch (images, their indices in the batch), and its mean logit."""
    images, index = mb
    logits = disc(augment(images, int(index[0])))
    return term(logits), {f"disc/logits_{side}": logits.detach().float().mean()}
