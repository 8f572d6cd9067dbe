"""The backbone interface: the stage-2 network f(x_t, t, y) -> prediction with the shape of x_t.

The condition ``y`` is a tensor whose meaning the backbone defines and names in ``condition``:

- ``"label"`` (LightningDiT, DiT-DH, SiT; the default): class ids (B,) with a null label
  (``null_label == num_classes``) for guidance;
- ``"context"`` (MMDiT): a (B, L, context_dim) sequence of caption features. The
  unconditional condition is the empty caption's context, which comes with the data, not
  with the model, so classifier-free guidance takes it as ``null_condition``; such a
  backbone has no ``num_classes`` or ``null_label``.

``check_condition`` validates y for the backbone's kind (a subclass with another condition
overrides it); code that makes y reads ``condition`` to know which kind it must make.

Every backbone can hand out its intermediate tokens for REPA:
``forward(x, t, y, return_tokens_at=k)`` returns ``(out, tokens)``, where ``tokens`` (B, N,
``token_width(k)``) are the hidden tokens after the first ``k`` transformer blocks (k counts
from 1, as REPA's ``encoder_depth``), so a projector is built as ``MLP(token_width(k), ...)``.
"""
from __future__ import annotations

import abc

import torch
from torch import nn

from rae.nn.init import initialize
from rae.nn.label import LabelEmbedder
from rae.nn.position import sincos_2d_position_embedding
from rae.nn.rope import RotaryEmbedding2D

BackboneOutput = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
CONDITIONS = ("label", "context")


class Backbone(nn.Module, abc.ABC):
    """Base of the stage-2 networks; subclasses set the attributes below and implement ``forward``."""

    in_channels: int
    input_size: int
    patch_size: int
    hidden_size: int
    y_embedder: LabelEmbedder
    condition: str = "label"
    """What ``y`` is, one of ``CONDITIONS`` (see the module docstring)."""
    linear_init: str = "xavier"
    """How the default ``initialize_weights`` starts the linear layers (`rae.nn.init.LINEAR_INITS`)."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.condition not in CONDITIONS:
            raise ValueError(f"{cls.__name__}.condition = {cls.condition!r}; expected one of {', '.join(CONDITIONS)}")

    def __init__(self, in_channels: int, input_size: int, patch_size: int) -> None:
        super().__init__()
        if input_size % patch_size != 0:
            raise ValueError(f"input_size {input_size} is not divisible by patch_size {patch_size}")
        self.in_channels = in_channels
        self.input_size = input_size
        self.patch_size = patch_size

    @property
    def grid_size(self) -> int:
        """Tokens per side of the square token grid."""
        return self.input_size // self.patch_size

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the x this backbone takes and returns."""
        return self.in_channels, self.input_size, self.input_size

    @property
    def num_classes(self) -> int:
        return self.y_embedder.num_classes

    @property
    def null_label(self) -> int:
        """The label of the unconditional model (classifier-free guidance)."""
        return self.y_embedder.null_label

    @property
    @abc.abstractmethod
    def num_blocks(self) -> int:
        """Transformer blocks in order of computation (valid ``return_tokens_at`` are 1..num_blocks)."""

    def token_width(self, block: int) -> int:
        """Channels of the tokens after block ``block`` (1-based): ``hidden_size`` unless the width changes."""
        return self.hidden_size

    def initialize_weights(self) -> None:
        """DiT's init in place (``linear_init`` linears, each block's own rule, sin-cos ``pos_embed`` if any);
        does nothing on the meta device."""
        if initialize(self, linear_init=self.linear_init):
            self.reset_position_embedding(getattr(self, "pos_embed", None))

    @abc.abstractmethod
    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, return_tokens_at: int | None = None
    ) -> BackboneOutput:
        """x (B, C, H, W), t (B,) in [0, 1] (1 = noise), y the condition -> same shape as x [, tokens]."""

    def check_inputs(
        self, x: torch.Tensor, t: torch.Tensor | float, y: torch.Tensor, return_tokens_at: int | None
    ) -> torch.Tensor:
        """Validate shapes before any work; returns t as a (B,) tensor (a scalar t is broadcast)."""
        name = type(self).__name__
        if x.ndim != 4 or tuple(x.shape[1:]) != self.latent_shape:
            c, h, w = self.latent_shape
            raise ValueError(f"{name} expects x of shape (B, {c}, {h}, {w}), got {tuple(x.shape)}")
        batch = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(batch)
        if tuple(t.shape) != (batch,):
            raise ValueError(f"{name} expects t of shape ({batch},) or a scalar, got {tuple(t.shape)}")
        self.check_condition(y, batch)
        if return_tokens_at is not None and not 1 <= return_tokens_at <= self.num_blocks:
            raise ValueError(
                f"{name}: return_tokens_at={return_tokens_at} is outside its blocks 1..{self.num_blocks}"
            )
        return t

    def check_condition(self, y: torch.Tensor, batch: int) -> None:
        """Class labels: y of shape (batch,); backbones with another ``condition`` override this."""
        if tuple(y.shape) != (batch,):
            raise ValueError(f"{type(self).__name__} expects labels y of shape ({batch},), got {tuple(y.shape)}")

    def reset_position_embedding(self, pos_embed: torch.Tensor | None) -> None:
        """Fill a frozen (1, N, dim) position embedding (parameter or buffer) with the 2-D sin-cos one."""
        if pos_embed is not None and not pos_embed.is_meta:
            with torch.no_grad():
                pos_embed.copy_(sincos_2d_position_embedding(pos_embed.shape[-1], self.grid_size)[None])


def frozen_position_embedding(num_tokens: int, dim: int) -> nn.Parameter:
    """A (1, N, dim) parameter without gradient (as released: counted and saved, never trained)."""
    return nn.Parameter(torch.zeros(1, num_tokens, dim), requires_grad=False)


def run_blocks(
    blocks: nn.ModuleList,
    x: torch.Tensor,
    c: torch.Tensor,
    rope: RotaryEmbedding2D | None,
    tokens_at: int | None,
    first: int = 1,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply ``blocks`` (numbered from ``first``); also return x after block ``tokens_at`` if it is one of them."""
    tokens = None
    for number, block in enumerate(blocks, start=first):
        x = block(x, c, rope=rope)
        if number == tokens_at:
            tokens = x
    return x, tokens
