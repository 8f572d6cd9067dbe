"""Capture and restore every random number generator a run uses, for exact resume."""
from __future__ import annotations

import random
from typing import Any

import torch


def seed_rngs(seed: int) -> None:
    """Seed every generator `rng_state` captures (torch's, on all devices, and Python's), so identical
    commands save identical states."""
    torch.manual_seed(seed)
    random.seed(seed)


def rng_state() -> dict[str, Any]:
    """CPU and CUDA torch generators and Python's; stored as tensors and plain data (weights_only-safe)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": _to_plain(random.getstate())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(_to_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _to_plain(value: Any) -> Any:
    return [_to_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def _to_tuple(value: Any) -> Any:
    return tuple(_to_tuple(v) for v in value) if isinstance(value, list) else value
