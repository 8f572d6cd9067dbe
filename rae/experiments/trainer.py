"""`Trainer`: what the training experiments (stage 1, stage 2 and REPA) share around their step.

The global batch and its split over ranks and micro-batches, the training length, the optimiser
options (`OptimOptions`), the config checks that go with them, and the session around the loop:
the data stream, logging, checkpoints, resume, and the EMA file written at the end.
"""
from __future__ import annotations

from typing import Any

from rae.accelerator import Accelerator
from rae.experiments.base import Experiment, configured_size
from rae.io import atomic_save
from rae.run_context import RunContext
from rae.train.data_stream import DataStream
from rae.train.options import OptimOptions, check_steps_or_epochs, in_steps
from rae.train.session import Stateful, TrainingSession


class Trainer(Experiment):
    """An experiment that trains: subclasses call `_set_training` in their constructor, then use the
    helpers below in ``run``."""

    dataset: Any

    def _set_training(self, batch_size: int, micro_batch_size: int | None, total_steps: int | None,
                      total_epochs: float | None, optim: OptimOptions | None, num_workers: int, log_every: int,
                      keep_checkpoints: int) -> None:
        """Keep the shared settings, refusing those no run can use (naming ``<kind>.<field>``)."""
        if batch_size < 1 or (micro_batch_size is not None and micro_batch_size < 1):
            raise ValueError(f"{self.kind}: batch sizes must be positive, got {batch_size}, {micro_batch_size}")
        if total_steps is None and total_epochs is None:
            raise ValueError(f"{self.kind}: set the training length, total_steps or total_epochs")
        check_steps_or_epochs(self.kind, total=(total_steps, total_epochs))
        self.optim = optim if optim is not None else OptimOptions()
        self.batch_size = batch_size
        self.micro_batch_size = micro_batch_size
        self.total = (total_steps, total_epochs)
        self.num_workers = num_workers
        self.log_every = log_every
        self.keep_checkpoints = keep_checkpoints

    def check(self, world_size: int) -> None:
        """The optimiser options, the batch's split over ``world_size`` ranks and micro-batches, the
        durations and cadences."""
        self._check_options()
        owner = self.kind
        if self.batch_size % world_size:
            raise ValueError(f"{owner}.batch_size {self.batch_size} is not divisible by the {world_size} ranks")
        per_rank = self.batch_size // world_size
        if self.micro_batch_size is not None and per_rank % self.micro_batch_size:
            raise ValueError(f"{owner}.micro_batch_size {self.micro_batch_size} does not divide the per-rank batch "
                             f"{per_rank} ({owner}.batch_size {self.batch_size} / {world_size} ranks)")
        size = configured_size(self.dataset)
        if size is not None and size < self.batch_size:
            raise ValueError(f"{owner}.batch_size {self.batch_size} is larger than the dataset ({size} samples, "
                             f"its size binding): one global batch must fit in it")
        positive = {"total_steps": self.total[0], "total_epochs": self.total[1], "log_every": self.log_every,
                    "keep_checkpoints": self.keep_checkpoints}
        for name, value in positive.items():
            if value is not None and not value > 0:
                raise ValueError(f"{owner}.{name} = {value!r}: expected a positive number")
        if self.num_workers < 0:
            raise ValueError(f"{owner}.num_workers = {self.num_workers!r}: expected a number >= 0")

    def _check_options(self) -> None:
        """The optimiser options' checks (`OptimOptions.check`), made before the run folder and again
        when a run starts."""
        self.optim.check(f"{self.kind}.optim")

    def _per_rank_batch(self, acc: Accelerator) -> int:
        """This rank's share of the global batch, refused when ranks or micro-batches do not divide it."""
        if self.batch_size % acc.world_size:
            raise ValueError(f"{self.kind}.batch_size {self.batch_size} is not divisible by the {acc.world_size} ranks")
        per_rank = self.batch_size // acc.world_size
        if self.micro_batch_size is not None and per_rank % self.micro_batch_size:
            raise ValueError(f"the per-rank batch {per_rank} (batch_size {self.batch_size} / {acc.world_size} ranks) "
                             f"is not divisible by micro_batch_size {self.micro_batch_size}")
        return per_rank

    def _stream(self, ctx: RunContext, data: Any, per_rank: int) -> DataStream:
        """The shuffled, resumable stream of this rank's batches."""
        return DataStream(data, per_rank, ctx.accelerator, seed=ctx.seed, shuffle=True, num_workers=self.num_workers)

    def _total_steps(self, stream: DataStream) -> int:
        """The training length in optimiser steps."""
        return in_steps(*self.total, stream.batches_per_epoch, None)

    def _open_session(self, ctx: RunContext, state: dict[str, Stateful], stream: DataStream) -> TrainingSession:
        """The session that logs, checkpoints ``state`` and resumes it from the run folder's newest checkpoint."""
        per_epoch = stream.batches_per_epoch
        session = TrainingSession(ctx, state, self._total_steps(stream), self.log_every,
                                  self.optim.checkpoint_steps(per_epoch), self.keep_checkpoints, name=self.kind)
        session.resume()
        return session

    def _finish(self, ctx: RunContext, session: TrainingSession, ema_state: dict[str, Any], ema_file: str,
                summary_key: str) -> dict[str, Any]:
        """Save the EMA weights (main rank), wait for every rank; the run's summary: length, EMA path, losses."""
        ema_path = ctx.run_dir / ema_file
        if ctx.accelerator.is_main:
            atomic_save(ema_state, ema_path)
        ctx.accelerator.barrier()
        summary = {"steps": session.step, "images": session.images, summary_key: str(ema_path)}
        return summary | {k: v for k, v in session.last_metrics.items() if k.startswith("loss")}
