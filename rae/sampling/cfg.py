"""Classifier-free guidance with a guidance interval (Ho & Salimans 2022; Kynkäänniemi et al. 2024)."""
from __future__ import annotations

import torch

from rae.registry import GUIDANCE
from rae.sampling.base import VelocityFn
from rae.sampling.guidance import GuidanceInputs, IntervalGuidance, PairFn


@GUIDANCE.register("cfg")
class ClassifierFreeGuidance(IntervalGuidance):
    """v = v_uncond + scale (v_cond - v_uncond) for t in [t_min, t_max], v_cond elsewhere.

    The conditional and unconditional halves go through the network as one batch of
    2B. The unconditional condition is ``null_condition`` when given (a tensor, e.g. the
    empty caption's context of a text-conditioned backbone), else the null class label
    ``num_classes`` (by default the backbone's ``null_label``). Steps outside the
    interval (and scale 1) run the conditional half only.
    """

    def pairs(self, velocity: VelocityFn, inputs: GuidanceInputs) -> PairFn:
        null_like = inputs.null_like()

        def conditional_and_null(x: torch.Tensor, t: torch.Tensor,
                                 y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            both = velocity(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null_like(y)]))
            cond, uncond = both.chunk(2)
            return uncond, cond

        return conditional_and_null

    def check_condition(self, y: torch.Tensor | None) -> None:
        if y is None:
            raise ValueError("classifier-free guidance needs class labels y (or a context), got None")
