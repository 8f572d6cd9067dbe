"""`embedded_captions`: the embedded shapes with captions ("a red star"), for text-to-image runs with no download.

Image i is the embedded dataset's image i (`rae.data.embedded`: class ``i % num_classes`` draws
shape c in hue family c); its captions name that colour and shape in two phrasings
(``CAPTION_TEMPLATES``). Contexts are the captions' features by ``text_encoder`` (a CLIP text
tower, `rae.encoders.clip_text`), computed once for the few distinct captions on first use; the
empty caption's features are the null condition. Items are ``(image in [0, 1], context)`` with
a caption drawn uniformly from torch's global generator, as `coco_features` draws one.
"""
from __future__ import annotations

import torch

from rae.conditions import CONTEXT
from rae.data.embedded import SHAPES, EmbeddedDataset
from rae.encoders.clip_text import CLIPTextEncoder
from rae.registry import DATASETS

COLOURS = ("red", "orange", "yellow", "green", "mint", "cyan", "azure", "blue", "purple", "pink")
"""Names of the embedded dataset's ten hue families, (c / 10) of the hue circle."""
CAPTION_TEMPLATES = ("{article} {colour} {shape}", "a picture of {article} {colour} {shape}")


def class_captions(label: int) -> list[str]:
    """The captions of class ``label`` (< 10): its colour and shape in every template."""
    colour, shape = COLOURS[label], list(SHAPES)[label]
    article = "an" if colour[0] in "aeiou" else "a"
    return [t.format(article=article, colour=colour, shape=shape) for t in CAPTION_TEMPLATES]


@DATASETS.register("embedded_captions")
class EmbeddedCaptions(torch.utils.data.Dataset):
    """``size`` embedded images of ``resolution`` px with captions; ``num_classes`` <= 10 shapes in distinct colours.

    ``p_uncond``: the caption dropout of stage 2 for classifier-free guidance (REPA: 0.1).
    """

    condition = CONTEXT

    def __init__(self, text_encoder: CLIPTextEncoder, size: int = 10_000, resolution: int = 32,
                 num_classes: int = 10, seed: int = 0, p_uncond: float = 0.1) -> None:
        if not 1 <= num_classes <= len(COLOURS):
            raise ValueError(f"embedded_captions.num_classes must be in 1..{len(COLOURS)} (one colour and shape "
                             f"each), got {num_classes}")
        if not 0 <= p_uncond < 1:
            raise ValueError(f"embedded_captions.p_uncond must be in [0, 1), got {p_uncond}")
        self.shapes = EmbeddedDataset(size, resolution, num_classes, seed)
        self.text_encoder = text_encoder
        self.size = size
        self.resolution = resolution
        self.p_uncond = p_uncond
        self._contexts: dict[str, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.size

    def num_captions(self, index: int) -> int:
        return len(CAPTION_TEMPLATES)

    def caption(self, index: int, k: int) -> str:
        return class_captions(self.shapes.label(index))[k]

    def _encoded(self) -> dict[str, torch.Tensor]:
        """Every distinct caption (and the empty one) -> its context, encoded once on the CPU."""
        if self._contexts is None:
            texts = [""] + [c for label in range(self.shapes.num_classes) for c in class_captions(label)]
            contexts = self.text_encoder.to("cpu").encode(texts)
            self._contexts = dict(zip(texts, contexts))
        return self._contexts

    def context(self, index: int, k: int) -> torch.Tensor:
        return self._encoded()[self.caption(index, k)]

    @property
    def empty_context(self) -> torch.Tensor:
        return self._encoded()[""]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A batch rendered at once, each image with one of its captions' contexts."""
        images = [image for image, _ in self.shapes.__getitems__(indices)]
        return [(image, self.context(i, int(torch.randint(len(CAPTION_TEMPLATES), ()))))
                for image, i in zip(images, indices)]
