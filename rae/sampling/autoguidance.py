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
from rae.sampling.guidance import GuidanceInputs, IntervalGuidance, PairFn
from rae.weights import Pretrained, missing_weights


@GUIDANCE.register("autoguidance")
class Autoguidance(nn.Module, Pretrained, IntervalGuidance):
    """Holds the guide network; its checkpoint loads with the other pretrained weights, not here."""

    def __init__(
        self,
        guide: nn.Module,
        checkpoint: str | None = None,
        scale: float = 1.0,
        t_min: float = 0.0,
        t_max: float = 1.0,
    ) -> None:
        nn.Module.__init__(self)
        IntervalGuidance.__init__(self, scale, t_min, t_max)
        self.guide = guide
        self.checkpoint = checkpoint

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

    def pairs(self, velocity: VelocityFn, inputs: GuidanceInputs) -> PairFn:
        guide = inputs.velocity(self.guide)

        def guide_and_main(x: torch.Tensor, t: torch.Tensor,
                           y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
            v_main = velocity(x, t, y)
            return guide(x, t, y), v_main

        return guide_and_main
