"""A view of a tracker that prefixes every metric, image and text name: one stage of a pipeline."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from rae.tracking.tracker import Tracker


class PrefixedTracker(Tracker):
    """Writes ``<prefix>/<name>`` into the parent run, so a pipeline's stages sit side by side in it.

    Params, tags and closing belong to the parent run and are left to its owner.
    """

    def __init__(self, parent: Tracker, prefix: str) -> None:
        self.parent = parent
        self.prefix = prefix
        self.name = parent.name

    def track(self, name: str, value: float, step: int, context: Mapping[str, Any] | None = None) -> None:
        self.parent.track(f"{self.prefix}/{name}", value, step, context)

    def track_images(self, name: str, images: torch.Tensor, step: int, captions: Sequence[str] | None = None,
                     context: Mapping[str, Any] | None = None) -> None:
        self.parent.track_images(f"{self.prefix}/{name}", images, step, captions, context)

    def log_text(self, name: str, text: str, step: int = 0) -> None:
        self.parent.log_text(f"{self.prefix}/{name}", text, step)
