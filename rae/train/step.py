"""One optimiser step over a global batch, split into micro-batches, exactly as one large batch.

Each micro-batch's mean loss is weighted by its share of the global batch before backward, and
gradients are zeroed once per step, not per micro-batch (the reference stage-1 code zeroes them
on every micro-batch, which silently trains on the last micro-batch only).
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from rae.accelerator import Accelerator
from rae.train.distributed import whole

MicroBatch = tuple[torch.Tensor, ...]


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN or Inf; training stops so the last good checkpoint stays the latest."""


class StepOutOfMemory(torch.OutOfMemoryError):
    """Out of memory inside a training step, re-raised with the sizes in use and how to lower them."""


def out_of_memory(error: torch.OutOfMemoryError, micro_batches: list[MicroBatch], accelerator: Accelerator,
                  step: int | None) -> StepOutOfMemory:
    """The OOM error a user can act on: step, per-rank batch, micro-batch, precision, world size."""
    per_rank = sum(mb[0].shape[0] for mb in micro_batches)
    micro = max(mb[0].shape[0] for mb in micro_batches)
    where = f"step {step}" if step is not None else "a training step"
    return StepOutOfMemory(
        f"out of memory on {accelerator.device} (rank {accelerator.rank} of {accelerator.world_size}) in {where}: "
        f"per-rank batch {per_rank} in micro-batches of {micro}, precision {accelerator.precision}. "
        "Lower the memory of a forward pass with a smaller micro_batch_size (same results, more passes), "
        "precision 'bf16' (run.precision), or shard the model over the GPUs with parallel 'fsdp'; "
        f"or train on more GPUs. ({error})"
    )


def split_batch(batch: Sequence[torch.Tensor], micro_batch_size: int | None) -> list[MicroBatch]:
    """Split tensors that share a leading batch dimension into micro-batches."""
    size = batch[0].shape[0]
    if micro_batch_size is None or micro_batch_size >= size:
        return [tuple(batch)]
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be positive, got {micro_batch_size}")
    return [tuple(t[i : i + micro_batch_size] for t in batch) for i in range(0, size, micro_batch_size)]


def accumulate_gradients(
    loss_fn: Callable[[MicroBatch], tuple[torch.Tensor, dict[str, torch.Tensor]]],
    micro_batches: list[MicroBatch],
    accelerator: Accelerator,
    ddp_module: nn.Module | None = None,
    scaler: torch.amp.GradScaler | None = None,
    step: int | None = None,
) -> dict[str, torch.Tensor]:
    """Backward every micro-batch's loss weighted by its share; return share-weighted metrics.

    ``loss_fn`` returns the micro-batch's mean loss and detached metrics. Metrics stay on the
    device (no host sync); DDP gradient all-reduce happens on the last micro-batch only
    (``ddp_module`` is anything with ``no_sync()``). An out-of-memory error is re-raised as
    `StepOutOfMemory`, naming ``step`` (the step being computed), the sizes and the precision.
    """
    try:
        return _accumulate(loss_fn, micro_batches, accelerator, ddp_module, scaler)
    except torch.OutOfMemoryError as error:
        if isinstance(error, StepOutOfMemory):
            raise
        raise out_of_memory(error, micro_batches, accelerator, step) from error


def _accumulate(loss_fn, micro_batches, accelerator, ddp_module, scaler) -> dict[str, torch.Tensor]:
    total = sum(mb[0].shape[0] for mb in micro_batches)
    metrics: dict[str, torch.Tensor] = {}
    for i, mb in enumerate(micro_batches):
        share = mb[0].shape[0] / total
        last = i == len(micro_batches) - 1
        sync = contextlib.nullcontext() if (ddp_module is None or last) else ddp_module.no_sync()
        with sync:
            with accelerator.autocast():
                loss, parts = loss_fn(mb)
            weighted = loss.float() * share
            (scaler.scale(weighted) if scaler is not None else weighted).backward()
        for key, value in {"loss": loss.detach(), **parts}.items():
            metrics[key] = metrics.get(key, 0.0) + value.detach().float() * share
    return metrics


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    params: Iterable[nn.Parameter],
    clip_grad: float | None,
    scaler: torch.amp.GradScaler | None = None,
) -> torch.Tensor:
    """Unscale, clip (if ``clip_grad``), step, zero grads; return the pre-clip gradient norm."""
    params = [p for p in params if p.grad is not None]
    if scaler is not None:
        scaler.unscale_(optimizer)
    max_norm = clip_grad if clip_grad else math.inf
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else torch.zeros(())
    norm = whole(norm)  # FSDP2: a replicated DTensor
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


def check_finite(metrics: dict[str, float], step: int) -> None:
    """Stop on a NaN/Inf loss with a message naming the step (checked where metrics are synced)."""
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    if bad:
        raise NonFiniteLoss(
            f"non-finite values at step {step}: {bad}; stopping (the last checkpoint is kept as the latest). "
            "Lower the learning rate, use fp32 or bf16 instead of fp16, or enable gradient clipping."
        )
