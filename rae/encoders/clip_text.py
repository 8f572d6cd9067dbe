"""`@text_encoder.clip_text`: CLIP's text tower, the caption features of text-to-image training (U-ViT, REPA).

U-ViT's ``libs/clip.py`` (``FrozenCLIPEmbedder``), which REPA's MS-COCO features come from: the
captions are tokenized by ``openai/clip-vit-large-patch14``'s tokenizer, truncated and padded to
77 tokens, and the context is transformers' ``CLIPTextModel(...).last_hidden_state``, (77, 768)
per caption, in fp32; the empty caption "" gives the null context (``empty_context.npy``).

The architecture is the text part of the released config.json, shipped in
``rae/encoders/configs/clip-vit-large-patch14-text.json`` (or a local ``save_pretrained`` folder's
own config), so the model builds offline; weights and tokenizer are read in ``load_pretrained``.
``config`` overrides entries of the architecture for tiny random-weight models, and
``tokenizer = "characters"`` replaces CLIP's BPE by `CharacterTokenizer`, which needs no files
(the tiny offline configs and tests; its ids mean nothing to a released model).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from rae.encoders.hf import CONFIG_DIR, PUBLISHED, copy_weights, offline, read_hub_or_folder
from rae.registry import TEXT_ENCODERS
from rae.weights import Pretrained

HUB_ID = "openai/clip-vit-large-patch14"
TOKENIZERS = ("published", "characters")
Tokenizer = Callable[[Sequence[str]], torch.Tensor]


def shipped_text_config(hub_id: str = HUB_ID) -> dict[str, Any]:
    """The text tower's config.json entries of a released CLIP, shipped as ``<name>-text.json``."""
    path = CONFIG_DIR / f"{hub_id.split('/')[-1]}-text.json"
    if not path.is_file():
        raise ValueError(f"no shipped text architecture for {hub_id} (expected {path})")
    return json.loads(path.read_text())["model"]


def folder_text_config(folder: Path) -> dict[str, Any]:
    """A save_pretrained folder's text config: a full CLIP config.json's ``text_config``, or a text model's own."""
    path = folder / "config.json"
    if not path.is_file():
        raise ValueError(f"clip text encoder weights folder {folder} has no config.json; expected a transformers "
                         "save_pretrained folder of a CLIPModel or CLIPTextModel")
    config = json.loads(path.read_text())
    if config.get("model_type") == "clip":
        return config["text_config"]
    if config.get("model_type") != "clip_text_model":
        raise ValueError(f"{path} describes a '{config.get('model_type')}' model, expected 'clip' or 'clip_text_model'")
    return config


class CharacterTokenizer:
    """Captions -> (n, max_length) ids without any vocabulary file: start id 0, one id per character
    (2 + code point mod (vocab_size - 2)), then the end id 1, which also pads (as CLIP pads with its end token).
    Captions longer than max_length are cut, keeping the end id last, as CLIP's truncation does."""

    def __init__(self, vocab_size: int, max_length: int) -> None:
        if vocab_size < 3 or max_length < 2:
            raise ValueError(f"CharacterTokenizer needs vocab_size >= 3 and max_length >= 2, "
                             f"got {vocab_size}, {max_length}")
        self.vocab_size = vocab_size
        self.max_length = max_length

    def __call__(self, captions: Sequence[str]) -> torch.Tensor:
        ids = torch.ones(len(captions), self.max_length, dtype=torch.long)
        for row, caption in enumerate(captions):
            body = [2 + ord(c) % (self.vocab_size - 2) for c in caption.lower()][: self.max_length - 2]
            ids[row, : len(body) + 1] = torch.tensor([0, *body])
        return ids


@TEXT_ENCODERS.register("clip_text")
class CLIPTextEncoder(nn.Module, Pretrained):
    """Frozen CLIP text tower: captions -> contexts (n, max_length, hidden_size), ``last_hidden_state``.

    ``weights``: "published" (the hub id ``openai/clip-vit-large-patch14``), another hub id, a local
    save_pretrained folder, or None (random weights: needs ``run.allow_random_weights``).
    ``tokenizer``: "published" (CLIP's BPE tokenizer from the same source as the weights) or
    "characters" (`CharacterTokenizer`, no files). ``config``: entries that replace the shipped
    architecture's (e.g. a tiny ``hidden_size``). ``seed``: the random initialisation, so a
    random-weight encoder gives the same contexts wherever it is built.
    """

    def __init__(self, weights: str | None = PUBLISHED, tokenizer: str = "published", max_length: int = 77,
                 config: dict[str, Any] | None = None, seed: int = 0) -> None:
        super().__init__()
        if tokenizer not in TOKENIZERS:
            raise ValueError(f"clip text encoder: tokenizer must be one of {TOKENIZERS}, got {tokenizer!r}")
        self.weights = HUB_ID if weights == PUBLISHED else weights
        local = self.weights is not None and Path(self.weights).expanduser().is_dir()
        arch = folder_text_config(Path(self.weights).expanduser()) if local else shipped_text_config()
        arch = {**arch, **(config or {})}
        if not 1 <= max_length <= arch["max_position_embeddings"]:
            raise ValueError(f"clip text encoder: max_length {max_length} must be in "
                             f"1..{arch['max_position_embeddings']} (the model's max_position_embeddings)")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = CLIPTextModel(CLIPTextConfig.from_dict(arch))
        self.model.requires_grad_(False).eval()
        self.tokenizer_kind = tokenizer
        self.max_length = max_length
        self._tokenizer: Tokenizer | None = (CharacterTokenizer(arch["vocab_size"], max_length)
                                             if tokenizer == "characters" else None)

    @property
    def context_dim(self) -> int:
        """Width of a context token: the text tower's hidden size (768 for ViT-L/14)."""
        return self.model.config.hidden_size

    def train(self, mode: bool = True) -> "CLIPTextEncoder":
        """Always in eval mode: the encoder is frozen."""
        return super().train(False)

    def tokenize(self, captions: Sequence[str]) -> torch.Tensor:
        """Captions -> (n, max_length) token ids, padded and truncated as U-ViT's ``FrozenCLIPEmbedder``."""
        if self._tokenizer is None:
            raise ValueError("clip text encoder: the published tokenizer is read with the weights (load_pretrained); "
                             "it has not been loaded. Use tokenizer = 'characters' for a run without files")
        return self._tokenizer(list(captions))

    @torch.no_grad()
    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        """Captions -> float32 contexts (n, max_length, hidden_size), the last hidden state."""
        ids = self.tokenize(captions).to(self.model.device)
        return self.model(input_ids=ids).last_hidden_state.float()

    def load_pretrained(self, allow_random: bool, log: logging.Logger) -> None:
        """Weights (and the published tokenizer) from the hub id or local folder in ``weights``."""
        what = "the CLIP text encoder"
        how = (f"Download it on a networked machine (`hf download {HUB_ID}`) and copy the Hugging Face cache here, "
               "or point clip_text.weights at a local save_pretrained folder")
        def read(name: str) -> CLIPTextModel:
            pretrained = CLIPTextModel.from_pretrained(name, local_files_only=offline())
            if self._tokenizer is None:
                bpe = CLIPTokenizer.from_pretrained(name, local_files_only=offline())
                self._tokenizer = lambda captions: bpe(
                    list(captions), truncation=True, max_length=self.max_length, padding="max_length",
                    return_tensors="pt")["input_ids"]
            return pretrained

        source = self.weights
        pretrained = read_hub_or_folder(read, source, what, how, allow_random, log)
        if pretrained is None:
            self._fallback_tokenizer(log)
            return
        copy_weights(self.model, pretrained.state_dict(), source, "the CLIP text encoder")
        log.info("loaded CLIP text encoder weights from %s", source)

    def _fallback_tokenizer(self, log: logging.Logger) -> None:
        """Random weights were allowed: without the published tokenizer, tokenize characters (said loudly)."""
        if self._tokenizer is None:
            log.warning("CLIP text encoder: no published tokenizer; tokenizing characters (random weights only)")
            self._tokenizer = CharacterTokenizer(self.model.config.vocab_size, self.max_length)
