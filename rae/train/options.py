"""`OptimOptions`: the optimiser options every trainer shares, in one object with its checks.

AdamW (lr, betas, weight decay, eps), its lr schedule (`rae.train.optim`: warmup and decay end in
optimiser steps or in epochs, the warmup's mode, the final lr), gradient clipping, the EMA decay of
the trained model and the checkpoint cadence. Gin binds it once (``stage2.optim = @optim()``,
``optim.lr = 2e-4``); stage 1 binds two, ``stage1.optim = @decoder/optim()`` and
``stage1.disc_optim = @disc/optim()``, which read the unscoped ``optim.*`` bindings unless a scope
overrides them. A trainer checks its options naming the binding, e.g. ``stage2.optim.lr = -1``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from rae.train.optim import SCHEDULES, WARMUPS, make_adamw, make_scheduler

DEFAULT_CHECKPOINT_EVERY = 5000  # optimiser steps, when neither checkpoint_every nor checkpoint_every_epochs is set


def in_steps(steps: int | None, epochs: float | None, steps_per_epoch: int, default: int | None) -> int | None:
    """A duration given in optimiser steps or in epochs (converted with the stream's steps per epoch)."""
    if epochs is not None:
        return round(epochs * steps_per_epoch)
    return steps if steps is not None else default


def check_steps_or_epochs(owner: str, **pairs: tuple[int | None, float | None]) -> None:
    """Refuse a duration given both in steps and in epochs, naming ``owner`` and the duration."""
    for name, (steps, epochs) in pairs.items():
        if steps is not None and epochs is not None:
            raise ValueError(f"{owner}: give {name} in steps or in epochs, not both (got {steps} and {epochs})")


@dataclass
class OptimOptions:
    """AdamW, its lr schedule, clipping, EMA decay and checkpoint cadence of one trainer's optimiser.

    Args:
      lr, betas, weight_decay, eps: AdamW's.
      lr_schedule: "constant", "linear" or "cosine" decay from the warmup's end to the decay end, down
        to ``final_lr`` (None: no decay below ``lr``).
      warmup_steps / warmup_epochs: the warmup's length; ``warmup_mode`` "linear" ramps the lr from
        zero, "constant" holds it at ``lr`` (RAE's released stage 2: ``warmup_from_zero: false``).
      decay_end_step / decay_end_epoch: where the decay ends (default: the end of training).
      grad_clip: max gradient norm (None: no clipping).
      ema_decay: decay of the trained model's EMA (stage 1's discriminator keeps none).
      checkpoint_every / checkpoint_every_epochs: checkpoint cadence (default: every 5000 steps; a
        trainer's run has one cadence, its main optimiser's).
    """

    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    eps: float = 1e-8
    lr_schedule: str = "constant"
    warmup_steps: int | None = None
    warmup_epochs: float | None = None
    warmup_mode: str = "linear"
    decay_end_step: int | None = None
    decay_end_epoch: float | None = None
    final_lr: float | None = None
    grad_clip: float | None = 1.0
    ema_decay: float = 0.9995
    checkpoint_every: int | None = None
    checkpoint_every_epochs: float | None = None

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas) if isinstance(self.betas, (list, tuple)) else self.betas

    def check(self, owner: str) -> None:
        """Raise ValueError for a value no run can use, naming ``owner.<field>`` (e.g. ``stage2.optim.lr``)."""
        check_steps_or_epochs(owner, warmup=(self.warmup_steps, self.warmup_epochs),
                              decay_end=(self.decay_end_step, self.decay_end_epoch),
                              checkpoint_every=(self.checkpoint_every, self.checkpoint_every_epochs))
        for name, names in (("lr_schedule", SCHEDULES), ("warmup_mode", WARMUPS)):
            if getattr(self, name) not in names:
                raise ValueError(f"{owner}.{name} = {getattr(self, name)!r}: expected one of {names}")
        for name in ("lr", "eps", "grad_clip", "checkpoint_every", "checkpoint_every_epochs"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{owner}.{name} = {value!r}: expected a positive number")
        for name in ("warmup_steps", "warmup_epochs", "decay_end_step", "decay_end_epoch", "final_lr", "weight_decay"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{owner}.{name} = {value!r}: expected a number >= 0")
        if not 0 <= self.ema_decay <= 1:
            raise ValueError(f"{owner}.ema_decay = {self.ema_decay!r}: expected a decay in [0, 1] (e.g. 0.9999)")
        if not isinstance(self.betas, tuple) or len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"{owner}.betas = {self.betas!r}: expected two AdamW betas in [0, 1)")

    def optimizer(self, params: Iterable[nn.Parameter]) -> torch.optim.AdamW:
        """AdamW over ``params`` with these options."""
        return make_adamw(params, self.lr, self.betas, self.weight_decay, self.eps)

    def scheduler(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                  total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
        """The lr schedule of ``optimizer``, its durations converted to optimiser steps."""
        return make_scheduler(optimizer, self.lr_schedule, in_steps(self.warmup_steps, self.warmup_epochs,
                                                                    steps_per_epoch, 0),
                              in_steps(self.decay_end_step, self.decay_end_epoch, steps_per_epoch, total_steps),
                              self.final_lr, self.warmup_mode)

    def checkpoint_steps(self, steps_per_epoch: int) -> int:
        """Optimiser steps between checkpoints."""
        return in_steps(self.checkpoint_every, self.checkpoint_every_epochs, steps_per_epoch, DEFAULT_CHECKPOINT_EVERY)
