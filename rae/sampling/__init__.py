"""Sampling: solvers from noise (t = 1) to data (t = 0), their time grids, and guidance rules."""
from rae.sampling.autoguidance import Autoguidance
from rae.sampling.base import PathCoefficients, Problem, Sampler, VelocityFn
from rae.sampling.cfg import ClassifierFreeGuidance
from rae.sampling.fixed_step import EulerSampler, HeunSampler
from rae.sampling.guidance import Guidance, GuidanceInputs, IntervalGuidance, NoGuidance
from rae.sampling.ode import ODESampler
from rae.sampling.sde import SDESampler
from rae.sampling.time_grid import resolve_shift, time_grid

__all__ = [
    "Autoguidance", "ClassifierFreeGuidance", "EulerSampler", "Guidance", "GuidanceInputs", "HeunSampler",
    "IntervalGuidance", "NoGuidance", "ODESampler", "PathCoefficients", "Problem", "SDESampler", "Sampler",
    "VelocityFn", "resolve_shift", "time_grid",
]
