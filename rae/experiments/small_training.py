"""The training loop of the quickstart's helper stages (the encoder's pretraining, the judging classifier):
one trainable module, AdamW and its schedule from an `OptimOptions`, resumable through `TrainingSession`,
on one rank."""
from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rae.experiments.base import Experiment, RunContext, check_positive, configured_size
from rae.io import atomic_save
from rae.train.data_stream import DataStream, to_device
from rae.train.options import OptimOptions
from rae.train.session import TrainingSession
from rae.train.step import optimizer_step


class SmallTraining(Experiment):
    """``total_steps`` AdamW steps of ``trainable()`` on batches of ``dataset``; ``weights_file()`` at the end.

    Subclasses say what trains (``trainable``), its loss on a batch (``loss``) and what the weights
    file holds (``weights_state``); ``kind`` names the config section in error messages.
    """

    output: str = "weights.pt"

    def __init__(self, dataset: Any, batch_size: int, total_steps: int, optim: OptimOptions, log_every: int,
                 num_workers: int) -> None:
        check_positive(self.kind, batch_size=batch_size, total_steps=total_steps, log_every=log_every)
        self.dataset, self.batch_size, self.total_steps = dataset, batch_size, total_steps
        self.optim, self.log_every, self.num_workers = optim, log_every, num_workers

    @abc.abstractmethod
    def trainable(self) -> nn.Module:
        """The module whose parameters the optimiser updates (its state is checkpointed)."""

    @abc.abstractmethod
    def loss(self, images: torch.Tensor, targets: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """A batch's loss to minimise and its detached metrics."""

    @abc.abstractmethod
    def weights_state(self) -> dict[str, torch.Tensor]:
        """The state dict written to ``output`` when training ends (what later stages load)."""

    def finish(self, ctx: RunContext) -> dict[str, Any]:
        """After the last step (all ranks): extra summary entries, e.g. a logged grid."""
        return {}

    def load_weights(self, allow_random: bool, log: Any) -> None:
        """Nothing pretrained: these stages train from their initialisation."""

    def check(self, world_size: int) -> None:
        if world_size != 1:
            raise ValueError(f"{self.kind} trains on one process (a minute on a CPU); got {world_size} ranks")
        size = configured_size(self.dataset)
        if size is not None and size < self.batch_size:
            raise ValueError(f"{self.kind}.batch_size {self.batch_size} is larger than the dataset ({size} images)")
        self.optim.check(f"{self.kind}.optim")

    def run(self, ctx: RunContext) -> dict[str, Any]:
        acc = ctx.accelerator
        module = self.trainable().to(acc.device).requires_grad_(True)
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = self.optim.optimizer(params)
        stream = DataStream(self.dataset, self.batch_size, acc, seed=ctx.seed, num_workers=self.num_workers)
        scheduler = self.optim.scheduler(optimizer, stream.batches_per_epoch, self.total_steps)
        session = TrainingSession(ctx, {"model": module, "optimizer": optimizer, "scheduler": scheduler,
                                        "data": stream}, self.total_steps, self.log_every,
                                  self.optim.checkpoint_steps(stream.batches_per_epoch))
        session.resume()
        ctx.log.info("%s: %d steps of %d images", self.kind, self.total_steps, self.batch_size)
        while not session.done:
            images, targets = to_device(next(stream), acc.device)
            with acc.autocast():
                loss, metrics = self.loss(images, targets)
            loss.float().backward()
            metrics = {"loss": loss.detach().float(), **metrics,
                       "grad_norm": optimizer_step(optimizer, params, clip_grad=self.optim.grad_clip)}
            scheduler.step()
            session.end_step(metrics, images=self.batch_size, scalars={"lr": scheduler.get_last_lr()[0]})
        module.requires_grad_(False)
        path = Path(ctx.run_dir) / self.output
        atomic_save(self.weights_state(), path)
        return {"steps": session.step, "weights": str(path), **self.finish(ctx),
                **{k: v for k, v in session.last_metrics.items() if k.startswith(("loss", "accuracy"))}}
