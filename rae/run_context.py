"""`RunContext`: what the runner hands every experiment from outside its config (device, tracker,
run folder, seed), in a module below both the experiments and the training pieces that read it."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from rae.accelerator import Accelerator
from rae.tracking.tracker import Tracker


@dataclass
class RunContext:
    """Everything an experiment needs from outside its own config."""

    accelerator: Accelerator
    tracker: Tracker
    run_dir: Path
    seed: int = 0
    allow_random_weights: bool = False
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("rae"))
