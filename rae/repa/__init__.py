"""REPA: aligning a diffusion backbone's hidden tokens with a frozen encoder's features."""
from rae.repa.checkpoint import from_repa_config, load_repa_checkpoint, read_repa_checkpoint
from rae.repa.loss import REPALoss  # registers @loss.repa
from rae.repa.projector import Projector, Projectors
from rae.repa.t2i import from_repa_mmdit_config

__all__ = [
    "Projector", "Projectors", "REPALoss", "from_repa_config", "from_repa_mmdit_config", "load_repa_checkpoint",
    "read_repa_checkpoint",
]
