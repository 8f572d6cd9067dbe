"""Stage-2 backbones (LightningDiT, DiT-DH); importing this package registers them."""
from rae.backbones import ditdh, lightningdit  # noqa: F401  (registration)
from rae.backbones.base import Backbone
from rae.backbones.ditdh import DiTDH
from rae.backbones.lightningdit import LightningDiT
from rae.backbones.release import from_reference_config, load_release_state

__all__ = ["Backbone", "DiTDH", "LightningDiT", "from_reference_config", "load_release_state"]
