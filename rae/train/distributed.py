"""Wrap a training module for data parallelism: DDP, or FSDP2 for models too large to replicate.

``wrap_for_training`` returns the module the step calls and a gradient-sync handle for
``accumulate_gradients`` (its ``no_sync()`` skips the all-reduce on all but the last micro-batch);
outside torchrun both are the plain module and None.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from rae.accelerator import Accelerator

STRATEGIES = ("ddp", "fsdp")


class FSDPGradSync:
    """The FSDP2 counterpart of DDP's ``no_sync``: no reduce-scatter inside the context."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        self.module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self.module.set_requires_gradient_sync(True)


def transformer_blocks(module: nn.Module) -> list[nn.Module]:
    """The members of every ``nn.ModuleList`` in ``module`` (a backbone's blocks): FSDP2's shard units."""
    return [block for child in module.modules() if isinstance(child, nn.ModuleList) for block in child]


@torch.no_grad()
def broadcast_from_rank0(module: nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers (DDP does this itself; FSDP2 does not)."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        torch.distributed.broadcast(tensor.data, src=0)


def wrap_for_training(module: nn.Module, accelerator: Accelerator, strategy: str = "ddp"
                      ) -> tuple[nn.Module, DistributedDataParallel | FSDPGradSync | None]:
    """(module the step calls, gradient-sync handle or None); a no-op on one process.

    "ddp" replicates the module and all-reduces gradients (rank 0's weights are broadcast first);
    "fsdp" shards each transformer block and then the root with FSDP2 ``fully_shard``, after
    broadcasting rank 0's weights, so parameters, gradients and optimiser state are split across ranks.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"parallel strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not accelerator.distributed:
        return module, None
    if strategy == "ddp":
        device_ids = [accelerator.device.index] if accelerator.device.type == "cuda" else None
        ddp = DistributedDataParallel(module, device_ids=device_ids, broadcast_buffers=False)
        return ddp, ddp
    from torch.distributed.fsdp import fully_shard

    broadcast_from_rank0(module)
    for block in transformer_blocks(module):
        fully_shard(block)
    fully_shard(module)
    return module, FSDPGradSync(module)
