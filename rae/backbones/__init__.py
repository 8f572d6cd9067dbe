"""Stage-2 backbones (LightningDiT, DiT-DH, REPA's SiT and MMDiT); importing this package registers them."""
from rae.backbones.base import Backbone
from rae.backbones.ditdh import DiTDH
from rae.backbones.lightningdit import LightningDiT
from rae.backbones.mmdit import MMDiT
from rae.backbones.release import from_reference_config, load_release_state
from rae.backbones.sit import SiT

__all__ = ["Backbone", "DiTDH", "LightningDiT", "MMDiT", "SiT", "from_reference_config", "load_release_state"]
