"""Wrap a training module for data parallelism: DDP, or FSDP2 for models too large to replicate.

``wrap_for_training`` returns the module the step calls and a gradient-sync handle for
``accumulate_gradients`` (its ``no_sync()`` skips the all-reduce on all but the last micro-batch);
outside torchrun both are the plain module and None. ``follow_training`` gives a copy that is not
trained (the EMA) the same start and sharding. Sharded modules are checkpointed through
`ShardedModuleState` / `ShardedOptimizerState`: whole state dicts, gathered by every rank together.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor, distribute_tensor
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


def shard(module: nn.Module, reshard_root: bool | None = None) -> None:
    """FSDP2 in place: every transformer block is a shard unit, then the root takes the rest.

    FSDP2 keeps the root's parameters gathered after a forward for the backward that follows;
    ``reshard_root`` True drops them at once (a module that is never trained, e.g. the EMA).
    """
    from torch.distributed.fsdp import fully_shard

    # inner units first (FSDP2 cannot shard a module whose parameters an outer unit already holds):
    # REPA's list of encoders holds each encoder's list of layers
    for block in reversed(transformer_blocks(module)):
        fully_shard(block)
    fully_shard(module, reshard_after_forward=reshard_root)


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
    broadcast_from_rank0(module)
    shard(module)
    return module, FSDPGradSync(module)


def follow_training(follower: nn.Module, accelerator: Accelerator, strategy: str) -> None:
    """Give a copy that is not trained (the EMA, made before wrapping) rank 0's weights and, under
    "fsdp", the trained module's sharding, so it updates shard by shard without communication."""
    if not accelerator.distributed:
        return
    broadcast_from_rank0(follower)
    if strategy == "fsdp":
        shard(follower, reshard_root=True)


# Saving gathers the whole state onto rank 0's CPU (other ranks get {}); loading takes the whole
# state on every rank (each reads the checkpoint file) and keeps this rank's shards.
_SAVE = StateDictOptions(full_state_dict=True, cpu_offload=True)
_LOAD = StateDictOptions(full_state_dict=True)


class ShardedModuleState:
    """Checkpoint state of a module with FSDP2-sharded parameters (or none): the whole state dict,
    with the module's own parameter names. Collective: every rank calls both methods."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def state_dict(self) -> dict[str, torch.Tensor]:
        return get_model_state_dict(self.module, options=_SAVE)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        set_model_state_dict(self.module, state, options=_LOAD)


class ShardedOptimizerState:
    """Checkpoint state of an optimiser over FSDP2-sharded parameters (or unsharded ones), keyed by
    parameter name rather than position, so it loads into any sharding of the same module."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.module = module
        self.optimizer = optimizer

    def state_dict(self) -> dict[str, object]:
        return get_optimizer_state_dict(self.module, self.optimizer, options=_SAVE)

    def load_state_dict(self, state: dict[str, object]) -> None:
        set_optimizer_state_dict(self.module, self.optimizer, state, options=_LOAD)


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor as a plain tensor: a sharded (DTensor) one is gathered, a collective."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


@torch.no_grad()
def copy_whole_into(param: torch.Tensor, value: torch.Tensor) -> None:
    """Copy a whole tensor into a parameter, keeping only this rank's shard when it is sharded."""
    if isinstance(param, DTensor):
        value = distribute_tensor(value.to(param.device, param.dtype), param.device_mesh, param.placements)
    param.copy_(value)
