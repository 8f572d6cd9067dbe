"""Shared test fixtures: golden files and tiny transformers encoders saved as local folders.

The tiny folders stand in for released checkpoints (``save_pretrained`` layout, with an
image-processor config carrying the pixel mean/std), so nothing downloads in a test.
"""
from __future__ import annotations

import os

# Nothing downloads at test time: the Hugging Face libraries read these once, at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json  # noqa: E402
from pathlib import Path

import gin
import pytest
import torch
from torch import nn
from transformers import (
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    SiglipConfig,
    SiglipModel,
    SiglipTextConfig,
    SiglipVisionConfig,
    ViTMAEConfig,
    ViTMAEForPreTraining,
)

# Test tensors are tiny: intra-op threads only add contention on a shared CPU (a 2-thread
# elementwise op measured 500x slower than 1 thread on a busy 2-core machine).
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "fixtures" / "golden"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
_TINY_VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_channels=3)


def save_tiny(model: nn.Module, folder: Path, image_mean: tuple, image_std: tuple, seed: int = 0) -> Path:
    """Perturb every parameter (so no norm is an identity), then ``save_pretrained`` with a processor config."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(folder)
    processor = {"image_mean": list(image_mean), "image_std": list(image_std), "do_normalize": True}
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


def tiny_dinov2(folder: Path, registers: bool = True) -> Path:
    """A 2-layer DINOv2 (patch 14, trained size 56 -> 4x4 tokens), with 4 registers or none."""
    kwargs = dict(_TINY_VIT, mlp_ratio=2, patch_size=14, image_size=56)
    if registers:
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=4, **kwargs))
    else:
        model = Dinov2Model(Dinov2Config(**kwargs))
    return save_tiny(model, folder, IMAGENET_MEAN, IMAGENET_STD)


def tiny_siglip(folder: Path) -> Path:
    """A whole tiny SigLIP (text + vision, as the released checkpoints), patch 8 at 32 px."""
    text = SiglipTextConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                            vocab_size=64, max_position_embeddings=16, pad_token_id=0, bos_token_id=1,
                            eos_token_id=2)
    vision = SiglipVisionConfig(**_TINY_VIT, intermediate_size=64, patch_size=8, image_size=32)
    config = SiglipConfig(text_config=text, vision_config=vision)
    return save_tiny(SiglipModel(config), folder, HALF, HALF)


def tiny_mae(folder: Path) -> Path:
    """A tiny ViT-MAE pre-training model (encoder + decoder, as the released one), patch 8 at 32 px."""
    config = ViTMAEConfig(**_TINY_VIT, intermediate_size=64, patch_size=8, image_size=32,
                          decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
                          decoder_intermediate_size=32)
    return save_tiny(ViTMAEForPreTraining(config), folder, IMAGENET_MEAN, IMAGENET_STD)


@pytest.fixture(autouse=True)
def unlocked_gin():
    """A test that runs the runner leaves gin's config finalized and locked; later tests that
    register plugins (as importing a user's module does) need it open again."""
    yield
    gin.clear_config()


@pytest.fixture
def clean_gin():
    """An empty gin config that finds the repository's fragments (``include 'backbones/...'``); emptied after."""
    gin.clear_config()
    gin.add_config_file_search_path(str(ROOT / "gin"))
    yield
    gin.clear_config()


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return GOLDEN


@pytest.fixture(scope="session")
def tiny_dinov2_registers_dir(tmp_path_factory) -> Path:
    return tiny_dinov2(tmp_path_factory.mktemp("tiny_dinov2_registers"), registers=True)


@pytest.fixture(scope="session")
def tiny_dinov2_dir(tmp_path_factory) -> Path:
    return tiny_dinov2(tmp_path_factory.mktemp("tiny_dinov2"), registers=False)


@pytest.fixture(scope="session")
def tiny_siglip_dir(tmp_path_factory) -> Path:
    return tiny_siglip(tmp_path_factory.mktemp("tiny_siglip"))


@pytest.fixture(scope="session")
def tiny_mae_dir(tmp_path_factory) -> Path:
    return tiny_mae(tmp_path_factory.mktemp("tiny_mae"))
