"""Stage-1 losses: LPIPS, the DINO discriminator, DiffAugment, GAN objectives, the adaptive GAN weight."""
from rae.losses import diffaug, discriminator, gan, perceptual  # noqa: F401  (register @loss.*)
from rae.losses.adaptive_weight import adaptive_gan_weight
from rae.losses.diffaug import DiffAugment
from rae.losses.discriminator import DinoDiscriminator
from rae.losses.gan import hinge_d_loss, quantize_8bit, vanilla_d_loss, vanilla_g_loss
from rae.losses.perceptual import LPIPS

__all__ = [
    "DiffAugment", "DinoDiscriminator", "LPIPS", "adaptive_gan_weight", "hinge_d_loss", "quantize_8bit",
    "vanilla_d_loss", "vanilla_g_loss",
]
