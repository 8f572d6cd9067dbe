"""The quickstart's own representation encoder: a tiny ViT, MAE-pretrained on the embedded images, then
frozen and loaded by every later stage from the file the pretraining writes."""
from __future__ import annotations

import logging
from dataclasses import replace

import pytest
import torch

from rae.data.embedded import EmbeddedDataset
from rae.encoders.tiny_vit import TinyViT
from rae.experiments.pretrain_encoder import MAE_OPTIM, PretrainEncoder, masked_pixels
from rae.weights import WeightsNotFound
from test_latent_cache import Recorder, run_experiment

log = logging.getLogger("test")


def test_tiny_vit_gives_patch_tokens_of_its_width_and_is_frozen():
    encoder = TinyViT(input_size=16, patch_size=4, hidden_size=16, depth=2, num_heads=2)
    images = torch.rand(3, 3, 16, 16)
    tokens = encoder(images)
    assert tokens.shape == (3, 16, 16) and encoder.token_grid == (4, 4)
    assert not any(p.requires_grad for p in encoder.parameters()) and not encoder.training
    # MAE's pass over a subset: all patches in order is the plain pass
    everything = torch.arange(16).expand(3, -1)
    torch.testing.assert_close(encoder.visible_tokens(encoder.preprocess(images), everything), tokens)
    assert encoder.visible_tokens(encoder.preprocess(images), everything[:, :5]).shape == (3, 5, 16)
    with pytest.raises(ValueError, match="multiple of"):
        TinyViT(input_size=18, patch_size=4)
    with pytest.raises(WeightsNotFound, match="tiny_vit.weights"):
        encoder.load_pretrained(allow_random=False, log=log)


def test_masked_pixels_cover_exactly_the_hidden_patches():
    keep = torch.tensor([[0, 3]])
    mask = masked_pixels(keep, num_patches=4, side=2, patch_size=2)
    expected = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]], dtype=torch.float32)
    assert torch.equal(mask[0, 0], expected)


def test_mae_pretraining_lowers_the_masked_loss_and_writes_the_encoder_later_stages_load(tmp_path):
    encoder = TinyViT(input_size=16, patch_size=4, hidden_size=16, depth=2, num_heads=2)
    stage = PretrainEncoder(encoder, EmbeddedDataset(size=64, resolution=16), predictor_width=16, predictor_heads=2,
                            batch_size=16, total_steps=40, log_every=10, grid_size=4,
                            optim=replace(MAE_OPTIM, lr=3e-3, warmup_steps=2, checkpoint_every=40))
    recorder = Recorder()
    summary = run_experiment(stage, tmp_path, recorder)
    losses = recorder.scalars["loss"]
    assert losses[40] < 0.7 * losses[10], losses
    (name, grid, _, captions), = recorder.images
    assert name == "masked_predictions" and grid.shape == (12, 3, 16, 16) and captions[8] == "MAE prediction 0"
    frozen = TinyViT(input_size=16, patch_size=4, hidden_size=16, depth=2, num_heads=2, weights=summary["weights"])
    frozen.load_pretrained(allow_random=False, log=log)
    images = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(frozen(images), encoder(images))
    assert not any(p.requires_grad for p in encoder.parameters())


def test_pretraining_refuses_settings_that_cannot_work():
    data = EmbeddedDataset(size=64, resolution=16)
    with pytest.raises(ValueError, match="mask_ratio"):
        PretrainEncoder(TinyViT(input_size=16, patch_size=4, hidden_size=16), data, mask_ratio=0.99)
    with pytest.raises(ValueError, match="input_size is 32"):
        PretrainEncoder(TinyViT(input_size=32, patch_size=4, hidden_size=16), data)
    with pytest.raises(ValueError, match="tiny_vit"):
        PretrainEncoder(torch.nn.Identity(), data)
    stage = PretrainEncoder(TinyViT(input_size=16, patch_size=4, hidden_size=16), data, batch_size=128)
    with pytest.raises(ValueError, match="larger than the dataset"):
        stage.check(world_size=1)
    with pytest.raises(ValueError, match="one process"):
        PretrainEncoder(TinyViT(input_size=16, patch_size=4, hidden_size=16), data).check(world_size=2)
    stage = PretrainEncoder(TinyViT(input_size=16, patch_size=4, hidden_size=16), data,
                            optim=replace(MAE_OPTIM, lr=-1.0))
    with pytest.raises(ValueError, match=r"pretrain_encoder\.optim\.lr = -1\.0"):
        stage.check(world_size=1)
