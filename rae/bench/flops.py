"""Model FLOPs counted by PyTorch's dispatcher, and the device's peak matmul rate measured, not assumed."""
from __future__ import annotations

import time
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from rae.bench.timing import synchronize


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of everything ``fn`` runs (forward and, if it calls it, backward), as counted per aten op.

    Matmuls, convolutions and attention are counted (2 FLOPs per multiply-add); elementwise ops
    and norms are not, so this is the "model FLOPs" of MFU (PaLM, App. B), not hardware FLOPs.
    """
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def measure_peak_flops(device: torch.device, dtype: torch.dtype, size: int | None = None,
                       min_seconds: float = 0.5, min_reps: int = 3) -> float:
    """Best FLOP/s of a square ``size`` x ``size`` matmul in ``dtype`` on ``device`` (after one warmup).

    The MFU denominator: measured in the precision of the run, so it reflects this chip, its
    TF32 setting and its thread count rather than a datasheet number.
    """
    size = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    torch.mm(a, b)
    synchronize(device)
    best, spent, reps = float("inf"), 0.0, 0
    while reps < min_reps or spent < min_seconds:
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        took = time.perf_counter() - start
        best, spent, reps = min(best, took), spent + took, reps + 1
    return 2 * size**3 / best
