"""The reference's DiT-DH and ViT decoder next to ours, of the same shapes and holding the same weights.

The reference model is built with the release's constructor (its own init), every parameter the
release starts at zero (adaLN-Zero, the final layer, the decoder's cls token) is then filled with
N(0, 0.02) so that outputs and gradients are not trivially zero, and our model loads that state
through the same key mapping that loads released checkpoints. Both therefore compute the same
function, which `agreement` checks before anything is timed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rae.backbones.ditdh import DiTDH
from rae.backbones.release import from_reference_config, load_release_state
from rae.backbones.sizes import DIT_SIZES
from rae.bench.reference import Reference
from rae.decoders.vit import VIT_SIZES, ViTDecoder

Dims = tuple[int, int, int]
"""(hidden_size, depth, num_heads) of a DiT-DH body or head."""

PAPER_HEAD: Dims = (2048, 2, 16)


def parse_dims(text: str, name: str) -> Dims:
    """A size preset (S, B, L, XL) or explicit ``hidden:depth:heads``; ValueError naming ``name`` otherwise."""
    if text.upper() in DIT_SIZES:
        return DIT_SIZES[text.upper()]
    parts = text.split(":")
    if len(parts) == 3 and all(p.isdigit() and int(p) > 0 for p in parts):
        hidden, depth, heads = (int(p) for p in parts)
        if hidden % heads == 0 and (hidden // heads) % 4 == 0:
            return hidden, depth, heads
    raise ValueError(f"--{name} {text!r}: expected one of {', '.join(DIT_SIZES)} or hidden:depth:heads with "
                     "hidden divisible by heads and a head width divisible by 4 (2-D RoPE)")


@dataclass(frozen=True)
class Shapes:
    """What both sides are built with: DiT-DH body, head and guide; latent grid; ViT decoder."""

    body: Dims = DIT_SIZES["S"]
    head: Dims = PAPER_HEAD
    guide: Dims = DIT_SIZES["S"]
    channels: int = 768
    grid: int = 16
    num_classes: int = 1000
    decoder: str = "XL"
    decoder_patch: int = 16

    def __post_init__(self) -> None:
        if self.channels < 1 or self.grid < 1 or self.num_classes < 1 or self.decoder_patch < 1:
            raise ValueError(f"channels, grid, num_classes and decoder_patch must be positive, got {self}")
        if self.decoder not in VIT_SIZES:
            raise ValueError(f"decoder size {self.decoder!r}: expected one of {', '.join(VIT_SIZES)}")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.channels, self.grid, self.grid

    @property
    def time_shift(self) -> float:
        """RAE's sqrt(C*H*W / 4096), at least 1 (the release's transport refuses shifts below 1)."""
        return max(1.0, math.sqrt(math.prod(self.latent_shape) / 4096))

    def reference_kwargs(self, body: Dims) -> dict[str, Any]:
        """``DiTwDDTHead`` constructor kwargs with the release's options (as its DiTDH-XL / -S yamls)."""
        return dict(
            input_size=self.grid, patch_size=1, in_channels=self.channels,
            hidden_size=[body[0], self.head[0]], depth=[body[1], self.head[1]],
            num_heads=[body[2], self.head[2]], mlp_ratio=4.0, class_dropout_prob=0.1,
            num_classes=self.num_classes, use_qknorm=False, use_swiglu=True, use_rope=True,
            use_rmsnorm=True, wo_shift=False, use_pos_embed=True,
        )

    def reference_decoder_config(self) -> Any:
        """The HF ``ViTMAEConfig`` the release's ``RAE`` hands ``GeneralDecoder`` (its configs/decoder/ViT*)."""
        from transformers import ViTMAEConfig

        dims = VIT_SIZES[self.decoder]
        return ViTMAEConfig(
            hidden_size=self.channels, patch_size=self.decoder_patch, image_size=self.decoder_patch * self.grid,
            num_channels=3, qkv_bias=True, hidden_act="gelu", layer_norm_eps=1e-12,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
            decoder_hidden_size=dims.hidden, decoder_num_hidden_layers=dims.depth,
            decoder_num_attention_heads=dims.heads, decoder_intermediate_size=dims.mlp,
        )


def unzero(module: nn.Module, seed: int) -> None:
    """Fill every all-zero floating parameter with N(0, 0.02) (deterministically, from ``seed``)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if param.is_floating_point() and not param.any():
                param.copy_(torch.randn(param.shape, generator=generator, device="cpu") * 0.02)


def backbone_pair(ref: Reference, shapes: Shapes, body: Dims, device: torch.device,
                  seed: int = 0) -> tuple[nn.Module, DiTDH]:
    """The release's ``DiTwDDTHead`` and our ``DiTDH`` of the same size, with the same weights, on ``device``."""
    torch.manual_seed(seed)
    kwargs = shapes.reference_kwargs(body)
    with torch.device(device):  # built where they run: initialising an XL on the CPU takes long
        reference = ref.DiTwDDTHead(**kwargs)
        unzero(reference, seed)
        ours = from_reference_config("ditdh", kwargs)
    load_release_state(ours, reference.state_dict(), source="the reference model built for the benchmark")
    return reference, ours


def decoder_pair(ref: Reference, shapes: Shapes, device: torch.device, seed: int = 0) -> tuple[nn.Module, ViTDecoder]:
    """The release's ``GeneralDecoder`` and our ``ViTDecoder`` of the same size, with the same weights."""
    torch.manual_seed(seed)
    with torch.device(device):
        reference = ref.GeneralDecoder(shapes.reference_decoder_config(), num_patches=shapes.grid**2)
        unzero(reference, seed)
        ours = ViTDecoder(shapes.channels, (shapes.grid, shapes.grid), size=shapes.decoder,
                          patch_size=shapes.decoder_patch)
    ours.load_state_dict(ours.import_state_dict(reference.state_dict()), strict=True)
    return reference, ours


def reference_decode(decoder: nn.Module, latent: torch.Tensor) -> torch.Tensor:
    """The release's ``RAE.decode`` without its (de)normalisation: (B, C, h, w) -> tokens -> pixels."""
    b, c, h, w = latent.shape
    tokens = latent.view(b, c, h * w).transpose(1, 2)
    return decoder.unpatchify(decoder(tokens, drop_cls_token=False).logits)


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |a|: how far two implementations' outputs are apart (``a`` must not be all zero)."""
    a, b = a.detach().float(), b.detach().float()
    if not a.abs().max() > 0:
        raise RuntimeError("the reference output is all zero: comparing it would prove nothing")
    return float((a - b).abs().max() / a.abs().max())


@torch.no_grad()
def check_agreement(ref: nn.Module, ours: nn.Module, shapes: Shapes, device: torch.device,
                    decoder: bool = False) -> float:
    """Relative max difference of the two models' outputs on one random input, in eval mode, fp32."""
    was = ref.training, ours.training
    ref.eval(), ours.eval()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, *shapes.latent_shape, generator=generator).to(device)
    if decoder:
        result = agreement(reference_decode(ref, x), ours(x))
    else:
        t = torch.rand(2, generator=generator).to(device)
        y = torch.randint(0, shapes.num_classes, (2,), generator=generator).to(device)
        result = agreement(ref(x, t, y), ours(x, t, y))
    ref.train(was[0]), ours.train(was[1])
    return result
