"""The options LightningDiT and DiT-DH share, in one dataclass that both constructors take field by field.

``takes_options`` makes each field a keyword-only constructor parameter with its default, so gin
binds them as before (``ditdh.use_swiglu = True``), ``--list`` and the operative config show them,
and the constructor receives them together as ``options``.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable, TypeVar

from torch import nn

from rae.backbones.base import frozen_position_embedding
from rae.nn.block import AdaLNBlock
from rae.nn.rope import RotaryEmbedding2D

T = TypeVar("T", bound=type)


@dataclasses.dataclass(frozen=True)
class DiTOptions:
    """Latent shape, labels and adaLN block style of a LightningDiT-style network; RAE's released values by default."""

    input_size: int = 16
    patch_size: int = 1
    in_channels: int = 768
    num_classes: int = 1000
    class_dropout_prob: float = 0.1
    mlp_ratio: float = 4.0
    use_swiglu: bool = True
    use_rope: bool = True
    use_rmsnorm: bool = True
    use_qknorm: bool = False
    wo_shift: bool = False
    use_pos_embed: bool = True

    @property
    def norm(self) -> str:
        """The norm of the blocks and the final layer: "rms" or "layer"."""
        return "rms" if self.use_rmsnorm else "layer"

    def block(self, dim: int, num_heads: int) -> AdaLNBlock:
        """One transformer block of this style."""
        return AdaLNBlock(dim, num_heads, self.mlp_ratio, mlp="swiglu" if self.use_swiglu else "gelu",
                          norm=self.norm, qk_norm=self.use_qknorm, shift=not self.wo_shift)

    def rope(self, dim: int, num_heads: int) -> RotaryEmbedding2D | None:
        """The 2-D rotary embedding of blocks ``dim`` wide with ``num_heads`` heads, if used."""
        grid = self.input_size // self.patch_size
        return RotaryEmbedding2D(dim // num_heads, grid) if self.use_rope else None

    def position_embedding(self, dim: int) -> nn.Parameter | None:
        """The frozen sin-cos position table of the token grid, if used (filled by ``initialize_weights``)."""
        tokens = (self.input_size // self.patch_size) ** 2
        return frozen_position_embedding(tokens, dim) if self.use_pos_embed else None


def takes_options(options_type: type) -> Callable[[T], T]:
    """Class decorator: ``__init__(self, ..., options)`` is called with the fields of the dataclass
    ``options_type`` as keyword arguments instead, and shows them as keyword-only parameters."""
    fields = dataclasses.fields(options_type)

    def decorate(cls: T) -> T:
        init = cls.__init__
        own = inspect.signature(init)
        shown = [p for p in own.parameters.values() if p.name != "options"] + [
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
            for f in fields
        ]

        @functools.wraps(init)
        def with_options(self: Any, *args: Any, **kwargs: Any) -> None:
            values = {f.name: kwargs.pop(f.name) for f in fields if f.name in kwargs}
            init(self, *args, options=options_type(**values), **kwargs)

        # gin reads parameters with getfullargspec, which follows __signature__, after following
        # __wrapped__ down to the last wrapper: this one must be the last, showing the fields
        with_options.__signature__ = own.replace(parameters=shown)  # type: ignore[attr-defined]
        del with_options.__wrapped__
        cls.__init__ = with_options
        return cls

    return decorate
