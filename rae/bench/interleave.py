"""Timing several implementations of one step in turns, so that a shared, drifting machine hits all alike.

Each round times every side for ``steps`` calls; the order flips every round (A B, B A, A B, ...),
so a load that rises or falls through the run is spread evenly over the sides. A ratio is taken
per round (both sides measured moments apart) and summarised by its median and range.
Besides wall seconds, every round records the process's CPU seconds (user + system) and its minor
page faults: on a shared CPU the CPU seconds are what other processes' load changes least, and
the faults show memory the C library had handed back to the OS and had to map again.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

from rae.bench.timing import synchronize

try:
    import resource
except ImportError:  # not on Windows: no page fault counts there
    resource = None


@dataclass(frozen=True)
class RatioStats:
    """time(reference) / time(side) per round: above 1 means the side is faster than the reference."""

    median: float
    low: float
    high: float
    rounds: int

    def __str__(self) -> str:
        return f"x{self.median:.2f} [{self.low:.2f}, {self.high:.2f}]"


@dataclass
class Rounds:
    """Per side, one entry per round: wall seconds, process CPU seconds, minor page faults (None: not counted)."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    cpu_seconds: dict[str, list[float]] = field(default_factory=dict)
    page_faults: dict[str, list[int | None]] = field(default_factory=dict)


def _page_faults() -> int | None:
    return None if resource is None else resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _timed(step: Callable[[], object], calls: int, device: torch.device) -> tuple[float, float, int | None]:
    """Wall seconds, CPU seconds and page faults of ``calls`` calls, the device synchronised at both ends."""
    synchronize(device)
    faults, cpu, wall = _page_faults(), time.process_time(), time.perf_counter()
    for _ in range(calls):
        step()
    synchronize(device)
    wall, cpu, after = time.perf_counter() - wall, time.process_time() - cpu, _page_faults()
    return wall, cpu, None if faults is None or after is None else after - faults


def interleave(steps: Mapping[str, Callable[[], object]], rounds: int, calls: int, warmup: int,
               device: torch.device) -> Rounds:
    """``warmup`` untimed rounds, then ``rounds`` timed ones, each running every side, the order flipping each round.

    The warm-up alternates as the timed rounds do: a side's memory then settles where it lies
    with the other side's allocations in between, as it will while being timed.
    """
    if rounds < 1 or calls < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1, calls >= 1 and warmup >= 0, got {rounds}, {calls}, {warmup}")
    if not steps:
        raise ValueError("nothing to time: no sides given")
    names = list(steps)
    for r in range(warmup):
        for name in (names if r % 2 == 0 else names[::-1]):
            steps[name]()
    out = Rounds({n: [] for n in names}, {n: [] for n in names}, {n: [] for n in names})
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            wall, cpu, faults = _timed(steps[name], calls, device)
            out.seconds[name].append(wall)
            out.cpu_seconds[name].append(cpu)
            out.page_faults[name].append(faults)
    return out


def ratios(seconds: Mapping[str, list[float]], baseline: str) -> dict[str, RatioStats]:
    """Per-round time ratios baseline / side for every side but the baseline."""
    if baseline not in seconds:
        raise ValueError(f"the baseline {baseline!r} was not timed; timed: {', '.join(seconds)}")
    base = seconds[baseline]
    out = {}
    for name, times in seconds.items():
        if name == baseline:
            continue
        per_round = [b / s for b, s in zip(base, times)]
        out[name] = RatioStats(statistics.median(per_round), min(per_round), max(per_round), len(per_round))
    return out
