"""What a stage-2 backbone is conditioned on, through one code path for both kinds of condition.

A backbone names its kind in ``condition`` (`rae.backbones.base`): class labels (``"label"``) or a
caption context (``"context"``, MMDiT). Data names the kind it yields the same way (``condition``,
``"label"`` when absent: every class-labelled dataset and latent cache). Caption data
(`CaptionData`: ``coco_features``, ``embedded_captions``) also carries the empty caption's context
and REPA's caption-dropout probability ``p_uncond``.

Training drops conditions for classifier-free guidance with one draw per sample of the global batch:
labels become the null label (`BatchLabelDropout`), contexts the empty caption's
(`BatchContextDropout`, as REPA's ``CFGDataset`` replaces captions with ``empty_context``).
Sampling draws conditions from a `ConditionSource`, which gives for every sample index its y, the
integer stored with the image (the class, or the index of the caption's image) and a caption for
grids and Aim (``class 3`` or the caption itself); guidance takes the source's null condition.
"""
from __future__ import annotations

import abc
from typing import Any, Protocol, Sequence

import torch

from rae.backbones.base import Backbone

LABEL, CONTEXT = "label", "context"
_WHAT = {LABEL: "class labels", CONTEXT: "caption contexts"}


class CaptionData(Protocol):
    """Images with captions: ``num_captions(i)`` captions for item i, each a string and a context (L, D)."""

    condition: str
    p_uncond: float

    def __len__(self) -> int: ...

    def num_captions(self, index: int) -> int: ...

    def caption(self, index: int, k: int) -> str: ...

    def context(self, index: int, k: int) -> torch.Tensor: ...

    @property
    def empty_context(self) -> torch.Tensor: ...


def data_condition(data: Any) -> str:
    """The kind of condition ``data`` yields: its ``condition``, else class labels."""
    return getattr(data, "condition", LABEL)


def check_condition(backbone: Backbone, kind: str, data_name: str) -> None:
    """Refuse data whose kind of condition is not the backbone's, naming both."""
    if backbone.condition != kind:
        raise ValueError(
            f"the backbone {type(backbone).__name__} is conditioned on {_WHAT[backbone.condition]} "
            f"(condition '{backbone.condition}'), but {data_name} gives {_WHAT[kind]}; use "
            + ("caption data (e.g. @dataset.coco_features()) with it" if backbone.condition == CONTEXT
               else "a class-conditional backbone (e.g. @backbone.sit()) with it, or a text-conditioned one "
                    "(@backbone.mmdit()) with caption data")
        )


def check_context_width(backbone: Backbone, data: CaptionData, data_name: str) -> None:
    """Refuse contexts whose width is not the backbone's ``context_dim`` (reads the data's empty context)."""
    width = data.empty_context.shape[-1]
    if width != backbone.context_dim:
        raise ValueError(f"{data_name} gives contexts {width} wide, but {type(backbone).__name__} embeds "
                         f"{backbone.context_dim}: set its context_dim to {width}")


# ---------------------------------------------------------------------------------------------
# Dropout for classifier-free guidance during training
# ---------------------------------------------------------------------------------------------
class BatchLabelDropout:
    """Label dropout drawn once per batch, before it is split, instead of in every forward pass.

    The backbone's label embedder would draw it per micro-batch, and on CUDA (where every kernel
    launch takes its own offset of the Philox stream) a split batch would then drop other labels
    than the whole one. So the embedder is switched to eval mode (no dropout of its own) and gets
    labels already dropped with its probability and null label.
    """

    def __init__(self, backbone: Backbone) -> None:
        self.embedder = backbone.y_embedder
        self.embedder.train(False)

    def __call__(self, labels: torch.Tensor, uniform: torch.Tensor | None = None) -> torch.Tensor:
        """Drop each label where ``uniform`` (drawn here when not given) is below the probability."""
        if self.embedder.dropout_prob <= 0:
            return labels
        if uniform is None:
            return self.embedder.drop(labels)
        return torch.where(uniform < self.embedder.dropout_prob, torch.full_like(labels, self.embedder.null_label),
                           labels)


class BatchContextDropout:
    """Caption dropout: each context (B, L, D) becomes the empty caption's where its uniform draw is below
    ``p_uncond`` (REPA's ``CFGDataset``, p 0.1, done here on the global batch's draws, not in the loader)."""

    def __init__(self, empty_context: torch.Tensor, p_uncond: float) -> None:
        if not 0 <= p_uncond < 1:
            raise ValueError(f"p_uncond must be in [0, 1), got {p_uncond}")
        self.empty_context = empty_context
        self.p_uncond = p_uncond

    def __call__(self, contexts: torch.Tensor, uniform: torch.Tensor | None = None) -> torch.Tensor:
        if self.p_uncond <= 0:
            return contexts
        if uniform is None:
            uniform = torch.rand(contexts.shape[0], device=contexts.device)
        drop = (uniform < self.p_uncond).view(-1, 1, 1)
        return torch.where(drop, self.empty_context.to(contexts), contexts)


def condition_dropout(backbone: Backbone, data: Any) -> BatchLabelDropout | BatchContextDropout:
    """The dropout of ``backbone``'s kind of condition: its label embedder's, or the caption data's."""
    if backbone.condition == LABEL:
        return BatchLabelDropout(backbone)
    return BatchContextDropout(data.empty_context, data.p_uncond)


# ---------------------------------------------------------------------------------------------
# Conditions of the samples
# ---------------------------------------------------------------------------------------------
def sample_generator(seed: int, index: int) -> torch.Generator:
    """The generator of sample ``index``: seeded by (seed, index) only, so batching cannot change it."""
    if not 0 <= index < 2**32 or not 0 <= seed < 2**31:
        raise ValueError(f"seed {seed} and index {index} must fit 31 and 32 bits")
    return torch.Generator().manual_seed((seed << 32) | index)


class ConditionSource(abc.ABC):
    """The condition of every sample index, drawn from that sample's own generator (before its noise)."""

    kind: str

    @abc.abstractmethod
    def item(self, index: int, generator: torch.Generator) -> tuple[torch.Tensor, int, str]:
        """(y of sample ``index``, the integer stored with its image, its caption)."""

    def null_condition(self) -> torch.Tensor | None:
        """The unconditional y of classifier-free guidance when it is not a null label."""
        return None

    def captions(self, seed: int, indices: Sequence[int]) -> list[str]:
        """The captions of the samples ``indices`` (for grids and Aim)."""
        return [self.item(i, sample_generator(seed, i))[2] for i in indices]

    def draw(self, seed: int, indices: Sequence[int], latent_shape: tuple[int, ...]
             ) -> tuple[torch.Tensor, torch.Tensor, list[int], list[str]]:
        """(noise (B, *latent_shape), y (B, ...), stored integers, captions) of the samples ``indices``."""
        noise, ys, ids, captions = [], [], [], []
        for i in indices:
            g = sample_generator(seed, i)
            y, stored, caption = self.item(i, g)
            ys.append(y)
            ids.append(stored)
            captions.append(caption)
            noise.append(torch.randn(latent_shape, generator=g))
        return torch.stack(noise), torch.stack(ys), ids, captions


class ClassLabels(ConditionSource):
    """Class labels: "equal" gives sample i the class ``i % num_classes``, "random" a uniform draw."""

    kind = LABEL
    MODES = ("equal", "random")

    def __init__(self, num_classes: int, mode: str = "equal") -> None:
        if mode not in self.MODES:
            raise ValueError(f"labels must be one of {self.MODES}, got {mode!r}")
        self.num_classes = num_classes
        self.mode = mode

    def item(self, index: int, generator: torch.Generator) -> tuple[torch.Tensor, int, str]:
        label = index % self.num_classes if self.mode == "equal" else int(
            torch.randint(self.num_classes, (), generator=generator))
        return torch.tensor(label), label, f"class {label}"


class Captions(ConditionSource):
    """Captions of caption data: sample i takes item ``order[i % len]`` (a permutation seeded by ``seed``, so
    the first n samples caption n distinct images) and one of its captions drawn uniformly, as REPA's
    ``generate_t2i.py`` takes a random caption of each COCO val image; stored with it: that item's index."""

    kind = CONTEXT

    def __init__(self, data: CaptionData, seed: int) -> None:
        self.data = data
        self.order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).tolist()

    def item(self, index: int, generator: torch.Generator) -> tuple[torch.Tensor, int, str]:
        image = self.order[index % len(self.order)]
        k = int(torch.randint(self.data.num_captions(image), (), generator=generator))
        return self.data.context(image, k), image, self.data.caption(image, k)

    def null_condition(self) -> torch.Tensor:
        return self.data.empty_context
