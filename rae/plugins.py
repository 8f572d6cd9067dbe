"""Import every built-in plugin module so that its registrations (and gin names) exist."""
from __future__ import annotations

import importlib

BUILTIN_PACKAGES = (
    "rae.tracking.aim_tracker",
    "rae.encoders",
    "rae.decoders",
    "rae.autoencoder",
    "rae.losses",
    "rae.data",
    "rae.backbones",
    "rae.transport",
    "rae.repa",
    "rae.vae",
    "rae.sampling",
    "rae.metrics",
    "rae.experiments",
)


def import_builtin() -> None:
    """Called by the runner before parsing gin files; each package imports its own modules."""
    for name in BUILTIN_PACKAGES:
        importlib.import_module(name)
