"""Transport: paths between data and noise, prediction types, time schedules and shift; importing registers them."""
from rae.transport.paths import GVPPath, LinearPath, Path, VPPath
from rae.transport.schedules import LogitNormal, TimeSchedule, Uniform
from rae.transport.shift import dimension_shift, shift_time
from rae.transport.transport import TrainingPoint, Transport

__all__ = [
    "GVPPath", "LinearPath", "LogitNormal", "Path", "TimeSchedule", "TrainingPoint", "Transport", "Uniform",
    "VPPath", "dimension_shift", "shift_time",
]
