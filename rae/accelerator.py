"""The accelerator context an experiment runs under: device, precision, rank and world size.

CUDA, CPU and XLA (TPU through ``torch_xla``; ``device="xla"``, or ``RAE_DEVICE=xla`` when no
device is given) share this one context; XLA-only calls live here so experiments stay portable.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator

import torch

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
XLA_PRECISIONS = ("fp32", "bf16")


def xla_available() -> bool:
    """Whether ``torch_xla`` is installed (it is an optional extra: ``pip install rae[tpu]``)."""
    return importlib.util.find_spec("torch_xla") is not None


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
        if self.is_xla and self.precision not in XLA_PRECISIONS:
            raise ValueError(f"precision on XLA must be one of {list(XLA_PRECISIONS)}, got {self.precision!r}")

    @property
    def is_main(self) -> bool:
        """Only the main process writes checkpoints, samples and tracker runs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_xla(self) -> bool:
        return self.device.type == "xla"

    @property
    def autocast_dtype(self) -> torch.dtype:
        return PRECISIONS[self.precision]

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for the forward pass; a no-op in fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def barrier(self) -> None:
        if not self.distributed:
            return
        if self.is_xla:
            import torch_xla.core.xla_model as xm

            xm.rendezvous("rae.barrier")
        elif torch.distributed.is_initialized():
            torch.distributed.barrier()

    def mark_step(self) -> None:
        """End of one training or sampling step: XLA compiles and runs the traced graph; a no-op elsewhere.

        Call it once per optimiser step (after ``optimizer.step``) so XLA graphs stay one step long.
        """
        if self.is_xla:
            import torch_xla

            torch_xla.sync()

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


def xla_device() -> torch.device:
    """This process's XLA device (a TPU core, or the CPU under ``PJRT_DEVICE=CPU``)."""
    if not xla_available():
        raise RuntimeError("device 'xla' needs torch_xla: pip install rae[tpu] (see docs/xla.md)")
    import torch_xla

    return torch_xla.device()


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
    device = device or os.environ.get("RAE_DEVICE") or None
    if device is not None and device.split(":")[0] == "xla":
        return _make_xla_accelerator(precision)
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


def _make_xla_accelerator(precision: str) -> Accelerator:
    """XLA: rank and world size from the PJRT runtime (torchrun or ``torch_xla.launch``), the
    ``xla`` process group (``xla://`` rendezvous) when there are several processes."""
    dev = xla_device()
    import torch_xla.runtime as xr

    rank, world_size, local_rank = xr.global_ordinal(), xr.world_size(), xr.local_ordinal()
    if world_size > 1 and not torch.distributed.is_initialized():
        import torch_xla.distributed.xla_backend  # noqa: F401  (registers the "xla" backend)

        torch.distributed.init_process_group("xla", init_method="xla://", timeout=collective_timeout())
    return Accelerator(device=dev, precision=precision, rank=rank, world_size=world_size, local_rank=local_rank)


def release(accelerator: Accelerator) -> None:
    """Leave the process group the accelerator joined (a clean exit for every rank)."""
    if accelerator.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
