"""The backend-agnostic tracker interface every experiment reports through."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch


class Tracker:
    """Records params, scalar metrics, images and texts of one experiment run.

    This base class records nothing: it is what non-main ranks and dry runs get.
    """

    name: str = ""

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Attach (nested) run parameters: the config, the commit, the environment."""

    def track(
        self, name: str, value: float, step: int, context: Mapping[str, Any] | None = None
    ) -> None:
        """One scalar metric value at a step (training step or image count)."""

    def track_images(
        self,
        name: str,
        images: torch.Tensor,
        step: int,
        captions: Sequence[str] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        """A batch of images in [0, 1], (B, 3, H, W), as one step of an image sequence."""

    def log_text(self, name: str, text: str, step: int = 0) -> None:
        """A text artefact, e.g. the operative gin config."""

    def add_tags(self, tags: Sequence[str]) -> None:
        """Labels that group runs in the UI (experiment kind, backbone, encoder)."""

    def close(self, error: BaseException | None = None) -> None:
        """Finish the run; with an error, mark it failed and attach the error text."""

    def track_dict(
        self, values: Mapping[str, float], step: int, context: Mapping[str, Any] | None = None
    ) -> None:
        """Several scalars at one step; non-finite values are skipped, never crash a run."""
        for key, value in values.items():
            value = float(value)
            if math.isfinite(value):
                self.track(key, value, step, context)
