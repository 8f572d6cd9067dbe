"""The accelerator context an experiment runs under: device, precision, rank and world size."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator

import torch

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Accelerator:
    """Where and how tensors are computed; experiments never look at the environment."""

    device: torch.device
    precision: str = "fp32"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}"
            )

    @property
    def is_main(self) -> bool:
        """Only the main process writes checkpoints, samples and tracker runs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def autocast_dtype(self) -> torch.dtype:
        return PRECISIONS[self.precision]

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for the forward pass; a no-op in fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def barrier(self) -> None:
        if self.distributed and torch.distributed.is_initialized():
            torch.distributed.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Let rank 0 do a step (a download, a cache build) before the others."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def describe(self) -> dict:
        return {
            "device": str(self.device),
            "precision": self.precision,
            "rank": self.rank,
            "world_size": self.world_size,
        }


def default_device() -> torch.device:
    """CUDA when present (the local rank's GPU), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def collective_timeout() -> timedelta:
    """How long a collective waits for a silent rank before the job fails (``RAE_DIST_TIMEOUT_S``,
    default 600 s): a dead or stuck rank ends the job in bounded time instead of hanging it."""
    return timedelta(seconds=float(os.environ.get("RAE_DIST_TIMEOUT_S", 600)))


def make_accelerator(device: str | None = None, precision: str = "fp32") -> Accelerator:
    """Build the context from torchrun's environment variables (rank 0 of 1 without them).

    Under torchrun (``WORLD_SIZE`` > 1) this joins the process group: NCCL on GPUs, gloo on CPUs,
    with torchrun's rendezvous (``MASTER_ADDR``/``MASTER_PORT``) and ``collective_timeout()``.
    """
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = torch.device(device) if device else default_device()
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if world_size > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend, rank=rank, world_size=world_size,
                                             timeout=collective_timeout())
    return Accelerator(device=dev, precision=precision, rank=rank, world_size=world_size, local_rank=local_rank)


def release(accelerator: Accelerator) -> None:
    """Leave the process group the accelerator joined (a clean exit for every rank)."""
    if accelerator.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
