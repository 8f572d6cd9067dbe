"""Timing several implementations of one step in turns, so that a shared, drifting machine hits all alike.

Each round times every side for ``steps`` calls; the order flips every round (A B, B A, A B, ...),
so a load that rises or falls through the run is spread evenly over the sides. A ratio is taken
per round (both sides measured moments apart) and summarised by its median and range.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from rae.bench.timing import time_steps


@dataclass(frozen=True)
class RatioStats:
    """time(reference) / time(side) per round: above 1 means the side is faster than the reference."""

    median: float
    low: float
    high: float
    rounds: int

    def __str__(self) -> str:
        return f"x{self.median:.2f} [{self.low:.2f}, {self.high:.2f}]"


def interleave(steps: Mapping[str, Callable[[], object]], rounds: int, calls: int, warmup: int,
               device: torch.device) -> dict[str, list[float]]:
    """Seconds per round for each side: ``warmup`` untimed calls of each, then ``rounds`` alternating rounds."""
    if rounds < 1 or calls < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1, calls >= 1 and warmup >= 0, got {rounds}, {calls}, {warmup}")
    if not steps:
        raise ValueError("nothing to time: no sides given")
    names = list(steps)
    for name in names:
        for _ in range(warmup):
            steps[name]()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            seconds[name].append(time_steps(steps[name], calls, 0, device))
    return seconds


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
