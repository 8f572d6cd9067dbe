"""Autoguidance (Karras et al. 2024): guide the model with a smaller, less-trained version of itself.

RAE guides DiT-DH-XL with DiT-DH-S: v = v_guide + scale (v_main - v_guide), both
conditional on the same labels, inside [t_min, t_max]; the main model's velocity elsewhere.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from rae.backbones.release import load_release_state
from rae.hub import resolve
from rae.registry import GUIDANCE
from rae.sampling.base import VelocityFn
from rae.sampling.guidance import (
    Guidance, Predictor, ToVelocity, any_inside, as_velocity, check_interval, inside_interval, mix,
)
from rae.weights import Pretrained, missing_weights


@GUIDANCE.register("autoguidance")
class Autoguidance(nn.Module, Pretrained, Guidance):
    """Holds the guide network; its checkpoint loads with the other pretrained weights, not here."""

    def __init__(
        self,
        guide: nn.Module,
        checkpoint: str | None = None,
        scale: float = 1.0,
        t_min: float = 0.0,
        t_max: float = 1.0,
    ) -> None:
        super().__init__()
        check_interval(scale, t_min, t_max)
        self.guide = guide
        self.checkpoint = checkpoint
        self.scale = scale
        self.t_min = t_min
        self.t_max = t_max

    def load_pretrained(self, allow_random: bool, log: logging.Logger) -> None:
        """Load the guide's released (or our own) checkpoint with the reference key names."""
        path = None if self.checkpoint is None else resolve(self.checkpoint, "the autoguidance guide")
        if path is None or not path.is_file():
            missing_weights(
                "the autoguidance guide model", f"checkpoint={self.checkpoint!r}",
                "Set `autoguidance.checkpoint` to the guide's .pt file (RAE releases DiT-DH-S "
                "guides in nyu-visionx/RAE-collections)", allow_random, log,
            )
            return
        load_release_state(self.guide, path)
        log.info("autoguidance guide loaded from %s", self.checkpoint)

    def velocity_fn(
        self,
        model: Predictor,
        *,
        to_velocity: ToVelocity | None = None,
        num_classes: int | None = None,
        null_condition: torch.Tensor | None = None,
    ) -> VelocityFn:
        main = as_velocity(model, to_velocity)
        if self.scale == 1.0:
            return main
        guide = as_velocity(self.guide, to_velocity)

        def guided(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
            v_main = main(x, t, y)
            inside = inside_interval(t, self.t_min, self.t_max)
            if not any_inside(inside):
                return v_main
            return mix(guide(x, t, y), v_main, self.scale, inside)

        return guided
